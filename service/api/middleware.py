"""Per-request context as plain ASGI middleware (cheaper than BaseHTTPMiddleware).

It assigns the request id, enforces the body size limit, counts requests in flight, records
HTTP metrics by route template, writes one JSON access line, and turns any unhandled error
into a problem+json 500 that still carries the request id. While the replica drains, every
response says `Connection: close`, so that a load balancer never reuses a keep-alive connection
that the replica is about to close (a request sent on one would fail, and a POST is not retried).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from service.observability import metrics
from service.observability.logging import request_id_var
from service.storage.prediction_log import PREDICTION_ID_STATE

# Set by a prediction that a routing policy placed: (version, role) for the response headers.
ROUTED_STATE = "torchdock.routed"

logger = logging.getLogger("torchdock.access")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_UNMATCHED = "unmatched"


class _BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, replica_id: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.replica_header = replica_id.encode("latin-1", "replace")

    def _too_large_problem(self) -> tuple[int, str, str, str]:
        detail = f"the request body exceeds {self.max_body_bytes} bytes"
        return 413, "body-too-large", "Content too large", detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False
        encoded_id = request_id.encode()

        too_large = False

        async def send_own(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", encoded_id))
                headers.append((b"x-replica-id", self.replica_header))
                prediction_id = scope.get("state", {}).get(PREDICTION_ID_STATE)
                if prediction_id is not None:
                    headers.append((b"x-prediction-id", str(prediction_id).encode()))
                routed = scope.get("state", {}).get(ROUTED_STATE)
                if routed is not None:
                    # Errors too: which side of a rollout failed is what a client reports.
                    version, role = routed
                    if not any(name == b"x-model-version" for name, _ in headers):
                        headers.append((b"x-model-version", str(version).encode()))
                    headers.append((b"x-routing-role", role.encode()))
                if _draining(scope):
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        async def send_from_app(message: Message) -> None:
            if too_large:
                # The app turned our receive error into its own answer (FastAPI says 400):
                # answer with the 413 it really is, and drop the app's response.
                if not response_started:
                    await _send_problem(send_own, *self._too_large_problem())
                return
            await send_own(message)

        received = 0

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLarge
            return message

        metrics.INFLIGHT.inc()
        try:
            if _declared_length(scope) > self.max_body_bytes:
                raise _BodyTooLarge
            await self.app(scope, limited_receive, send_from_app)
        except _BodyTooLarge:
            status = 413
            if not response_started:
                await _send_problem(send_own, *self._too_large_problem())
        except Exception:
            logger.exception("unhandled error")
            status = 500
            if not response_started:
                await _send_problem(
                    send_own,
                    500,
                    "internal-error",
                    "Internal error",
                    "an unexpected error occurred",
                )
        finally:
            metrics.INFLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", _UNMATCHED)
            method = scope["method"]
            metrics.http_requests(method, template, status).inc()
            metrics.http_latency(method, template).observe(elapsed)
            logger.info(
                "request",
                extra={
                    "method": method,
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "client": (scope.get("client") or ("-",))[0],
                },
            )
            request_id_var.reset(token)


def _draining(scope: Scope) -> bool:
    services = getattr(getattr(scope.get("app"), "state", None), "torchdock", None)
    return bool(services is not None and services.lifecycle.draining)


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _declared_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _send_problem(send: Send, status: int, slug: str, title: str, detail: str) -> None:
    body = problem_body(status, slug, title, detail)
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
