"""The one place where exceptions become HTTP problems."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from service.api.json_route import names_json
from service.api.problems import Problem, problem_response
from service.runtime import errors as rt

logger = logging.getLogger(__name__)

# The validation errors listed in a 422, and the length of each of their texts.
_MAX_ERRORS = 20
_MAX_TEXT = 120

_RUNTIME: dict[type[rt.RuntimeProblem], tuple[int, str, str]] = {
    rt.ModelNotFound: (404, "model-not-found", "Model not found"),
    rt.ModelNotReady: (503, "model-not-ready", "Model not ready"),
    rt.TooManyInstances: (422, "too-many-instances", "Too many instances"),
    rt.InvalidInput: (422, "invalid-input", "Invalid input"),
    rt.RequestTooCostly: (413, "request-too-costly", "Request over budget"),
    rt.QueueFull: (429, "queue-full", "Too many requests"),
    rt.DeadlineExceeded: (504, "deadline-exceeded", "Deadline exceeded"),
    rt.ShuttingDown: (503, "shutting-down", "Shutting down"),
    # nginx's convention for "client closed request": only logs and metrics ever see it.
    rt.ClientDisconnected: (499, "client-closed-request", "Client closed request"),
    rt.InferenceFailed: (500, "inference-failed", "Inference failed"),
    rt.ModelControlDisabled: (409, "model-control-disabled", "Model control disabled"),
    rt.ModelLoadFailed: (400, "model-load-failed", "Model load failed"),
}


def problem_from_runtime(exc: rt.RuntimeProblem) -> Problem:
    for cls in type(exc).__mro__:
        if cls in _RUNTIME:
            status, slug, title = _RUNTIME[cls]
            break
    else:
        status, slug, title = 500, "internal-error", "Internal error"
    headers = {}
    if isinstance(exc, rt.QueueFull):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, (rt.ShuttingDown, rt.ModelNotReady)):
        headers["Retry-After"] = "1"
    return Problem(status, slug, title, str(exc), headers=headers)


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_runtime(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, rt.RuntimeProblem)
    if isinstance(exc, rt.InferenceFailed):
        logger.error("inference failed: %s", exc, exc_info=exc.__cause__)
    return problem_response(problem_from_runtime(exc))


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if "inference-header-content-length" in request.headers:
        return problem_response(
            Problem(
                400,
                "binary-data-unsupported",
                "Binary tensors not supported",
                "the binary tensor data extension is not supported: send JSON tensors",
            )
        )
    content_type = request.headers.get("content-type")
    if not names_json(content_type):  # the body was never read as JSON, so its errors say nothing
        media = (content_type or "").partition(";")[0].strip()[:_MAX_TEXT]
        return problem_response(
            Problem(
                415,
                "unsupported-media-type",
                "Unsupported media type",
                f"send the body as JSON with Content-Type: application/json, not {media}",
            )
        )
    invalid = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if invalid is not None:
        reason = (invalid.get("ctx") or {}).get("error")
        detail = "the request body is not valid JSON" + (f": {reason}" if reason else "")
        return problem_response(Problem(400, "malformed-json", "Malformed JSON", detail))
    # Bounded: a body of many bad parts (or of huge keys) must not get a bigger answer back.
    details = [
        {
            "loc": [str(p)[:_MAX_TEXT] for p in e.get("loc", ())],
            "msg": str(e.get("msg", ""))[:_MAX_TEXT],
        }
        for e in errors[:_MAX_ERRORS]
    ]
    summary = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
    extra = {"errors": details, "errors_total": len(errors)}
    return problem_response(
        Problem(422, "invalid-request", "Invalid request", summary, extra=extra)
    )


async def _on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    titles = {404: "Not found", 405: "Method not allowed", 415: "Unsupported media type"}
    title = titles.get(exc.status_code, "HTTP error")
    return problem_response(
        Problem(
            exc.status_code,
            title.lower().replace(" ", "-"),
            title,
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(rt.RuntimeProblem, _on_runtime)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    # Anything else is caught by RequestContextMiddleware, so that even a 500 carries its
    # request id header and never a stack trace.
