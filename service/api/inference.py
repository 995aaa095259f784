"""What V1 and V2 share over HTTP: the model, the deadline, the response, the log row.

The prediction itself (cache, single-flight, batcher) is the runtime's `InferenceService`."""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import orjson
from fastapi import Request
from starlette.responses import Response

from service.api.api_keys import API_KEY_STATE
from service.api.deps import AppState
from service.api.errors import problem_from_runtime
from service.api.middleware import ROUTED_STATE
from service.api.problems import Problem
from service.api.routing import Routed, routed_model
from service.observability import metrics
from service.observability.logging import request_id_var
from service.rollouts.shadow import ShadowRequest
from service.runtime.errors import RuntimeProblem, TooManyInstances
from service.runtime.inference import Outcome
from service.runtime.model import LoadedModel
from service.runtime.repository import version_number
from service.storage.prediction_log import PREDICTION_ID_STATE, PredictionRow

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
Payload = TypeVar("Payload")


def deadline_for(request: Request, state: AppState, started: float) -> float:
    raw = request.headers.get("x-request-timeout")
    timeout = state.settings.request_timeout_s
    if raw is not None:
        try:
            timeout = float(raw)
        except ValueError:
            timeout = -1.0
        limit = state.settings.max_request_timeout_s
        if not 0 < timeout <= limit:
            raise Problem(
                400,
                "invalid-timeout",
                "Invalid timeout",
                f"X-Request-Timeout must be a number of seconds in (0, {limit:g}]",
            )
    return started + timeout


def _wants_bypass(request: Request) -> bool:
    return "no-cache" in request.headers.get("cache-control", "").lower()


def check_instance_count(model: LoadedModel, count: int) -> None:
    """Before any instance is decoded: 180 images once took 9 s to decode, only to be refused.
    Counted on the request as sent: cache hits and duplicates do not make it smaller."""
    if count > model.batcher.max_batch_size:
        raise TooManyInstances(
            f"{count} instances exceed this model's max_batch_size"
            f" of {model.batcher.max_batch_size}"
        )


async def decoded(
    state: AppState, model: LoadedModel, decode: Callable[[Payload], list[Any]], payload: Payload
) -> list[Any]:
    """Items from a request's instances, on a decode thread where the handler's are costly."""
    if model.handler.blocking_decode:
        return await state.decode_threads.run(decode, payload)
    return decode(payload)


async def predict(
    state: AppState, request: Request, model: LoadedModel, items: Sequence[Any], started: float
) -> Outcome:
    """The predictions of items whose count the route has checked, with the request's
    deadline and cache-control."""
    return await state.inference.predict(
        model,
        items,
        deadline=deadline_for(request, state, started),
        use_cache=not _wants_bypass(request),
        is_abandoned=request.is_disconnected,
    )


def json_response(
    payload: Any, *, version: int | None = None, status: int = 200, cache: str | None = None
) -> Response:
    """orjson straight from numpy; `version` becomes the X-Model-Version header."""
    headers = {}
    if version is not None:
        headers["X-Model-Version"] = str(version)
    if cache is not None:
        headers["X-Cache"] = cache
    return Response(
        orjson.dumps(payload, option=_JSON_OPTIONS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


class PredictionRecord:
    """Writes the prediction-log row of one request, whatever way the request ends.

    Use as `with PredictionRecord(...) as record:`; set `model`, `outcome` and `response` as
    they become known. Exceptions pass through after the row is recorded.
    """

    def __init__(self, state: AppState, request: Request, name: str, version: str | None) -> None:
        self.state = state
        self.request = request
        self.name = name
        self.version = version
        self.started = time.monotonic()
        self.created_at = dt.datetime.now(dt.UTC)
        self.model: LoadedModel | None = None
        self.routed: Routed | None = None
        self.outcome: Outcome | None = None
        self.response: Response | None = None
        self.request_body: bytes | None = None
        self.instances = 0
        self.prediction_id = uuid.uuid4()
        if state.prediction_log.enabled:
            # The middleware answers with it: the client's handle on its own row, since the
            # request id is the client's to choose, and two may choose the same.
            request.scope.setdefault("state", {})[PREDICTION_ID_STATE] = self.prediction_id

    def __enter__(self) -> PredictionRecord:
        return self

    def route(self) -> LoadedModel:
        """The version this request runs on (the one it names, or its routing policy's
        choice); held until the request ends, so that unloading the version waits for it."""
        self.routed = routed_model(self.state, self.request, self.name, self.version)
        model = self.model = self.routed.model
        model.acquire()
        # Always written: a server may hand every request the same state mapping.
        self.request.scope.setdefault("state", {})[ROUTED_STATE] = (
            (model.version, self.routed.role) if self.routed.policy is not None else None
        )
        return model

    async def predict(self, items: Sequence[Any]) -> Outcome:
        """The predictions of items whose count the route has checked; a shadow version, if
        the policy names one, gets the same items once they are answered."""
        assert self.model is not None
        self.outcome = await predict(self.state, self.request, self.model, items, self.started)
        self._shadow(items, self.outcome.predictions)
        return self.outcome

    def _shadow(self, items: Sequence[Any], predictions: list[Any]) -> None:
        policy = self.routed.policy if self.routed else None
        if policy is None or policy.shadow is None or self.model is None:
            return
        self.state.shadows.offer(
            ShadowRequest(
                model=self.name,
                version=policy.shadow.version,
                items=items,
                primary=predictions,
                primary_version=self.model.version,
                request_id=request_id_var.get() or "",
                client_addr=self.request.client.host if self.request.client else None,
                api_key_id=self.request.scope.get("state", {}).get(API_KEY_STATE),
            )
        )

    async def capture_body(self) -> None:
        """Keep the request body for the row, when payloads are logged (FastAPI caches it)."""
        if self.state.prediction_log.enabled and self.state.settings.log_payloads:
            self.request_body = await self.request.body()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.model is not None:
            self.model.release()
        status, error_type = 200, None
        if isinstance(exc, Problem):
            status, error_type = exc.status, exc.slug
        elif isinstance(exc, RuntimeProblem):
            problem = problem_from_runtime(exc)
            status, error_type = problem.status, problem.slug
        elif exc is not None:
            return  # cancelled, or a bug that the middleware reports; no row to trust
        # Labelled by the resolved model only: a URL's model name is the client's to invent.
        model = self.model
        labels = (model.name, str(model.version)) if model else ("_unknown", "")
        metrics.prediction_requests(*labels, status).inc()
        if model is not None:
            # Every outcome, errors included: a deadline that expires is a slow request too.
            elapsed = time.monotonic() - self.started
            metrics.REQUEST_LATENCY.labels(*labels).observe(elapsed)
            role = self.routed.role if self.routed else "primary"
            metrics.routed_requests(*labels, role, status).inc()
            metrics.routed_latency(*labels, role).observe(elapsed)
        if self.state.prediction_log.enabled:
            self.state.prediction_log.record(self._row(status, error_type))

    def _row(self, status: int, error_type: str | None) -> PredictionRow:
        settings = self.state.settings
        outcome = self.outcome
        batched = outcome.batched if outcome else None
        version = self.model.version if self.model else _int_or_zero(self.version)
        cap = settings.log_payload_max_bytes if settings.log_payloads else 0
        input_payload = output_payload = None
        if cap:
            input_payload = self.request_body[:cap] if self.request_body is not None else None
            if self.response is not None:
                output_payload = bytes(self.response.body[:cap])
        client = self.request.client.host if self.request.client else None
        return PredictionRow(
            request_id=request_id_var.get() or "",
            created_at=self.created_at,
            model_name=self.name.replace("\x00", "")[:200],  # a URL can carry anything
            model_version=version,
            client_addr=client,
            status_code=status,
            cache_result=outcome.cache_result if outcome else "bypass",
            instances=len(outcome.keys) if outcome else self.instances,
            batch_size=batched.batch_size if batched else None,
            queue_ms=batched.queue_s * 1000 if batched else None,
            inference_ms=batched.inference_s * 1000 if batched else None,
            total_ms=(time.monotonic() - self.started) * 1000,
            input_digest=_digest(k.encode() for k in outcome.keys) if outcome else None,
            # The response body itself: a hit is byte-identical, so it digests the same.
            output_digest=_digest([bytes(self.response.body)]) if self.response else None,
            input_payload=input_payload,
            output_payload=output_payload,
            payload_cap_bytes=cap,
            replica_id=settings.replica_id,
            error_type=error_type,
            prediction_id=self.prediction_id,
            api_key_id=self.request.scope.get("state", {}).get(API_KEY_STATE),
            role=self.routed.role if self.routed else "primary",
            compared_version=self.routed.primary_version if self.routed else None,
        )


def _digest(parts: Any) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def _int_or_zero(version: str | None) -> int:
    """A version from the URL, as the log's integer column can hold it (0 when it cannot)."""
    return (version_number(version) if version else None) or 0
