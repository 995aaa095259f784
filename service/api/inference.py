"""What V1 and V2 share: resolving the model, the deadline, and running a prediction."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import Request
from starlette.responses import Response

from service.api.deps import AppState
from service.api.problems import Problem
from service.observability import metrics
from service.runtime.errors import ModelNotFound
from service.runtime.model import LoadedModel

_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def parse_version(version: str | None, *, model: str) -> int | None:
    if version is None:
        return None
    if not version.isdigit():
        raise ModelNotFound(f"model {model!r} has no version {version!r}")
    return int(version)


def resolve_model(state: AppState, name: str, version: str | None) -> LoadedModel:
    return state.registry.get(name, parse_version(version, model=name))


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


async def predict(
    state: AppState, request: Request, model: LoadedModel, items: Sequence[Any], started: float
) -> list[Any]:
    deadline = deadline_for(request, state, started)
    predictions = await model.batcher.submit(
        items, deadline=deadline, is_abandoned=request.is_disconnected
    )
    metrics.REQUEST_LATENCY.labels(model.name, str(model.version)).observe(
        time.monotonic() - started
    )
    return predictions


def json_response(payload: Any, *, model: LoadedModel | None = None, status: int = 200) -> Response:
    headers = {"X-Model-Version": str(model.version)} if model is not None else None
    return Response(
        orjson.dumps(payload, option=_JSON_OPTIONS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )
