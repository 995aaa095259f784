"""The prediction routes' handler: FastAPI documents them, and they answer without its
per-request machinery.

FastAPI's handler solves the endpoint's dependency graph, validates each parameter and walks
its route contexts on every request. For a prediction that was ~40% of the event loop's time:
digits, in-process at concurrency 32, 1.00-1.07 ms of loop CPU a request with it and
0.59-0.68 ms with this handler (`benchmarks/event_loop.py`). A prediction needs four things,
done here in the order FastAPI did them: read and parse the body, check the API key, validate
the body, call the endpoint. Errors take FastAPI's own shape (`RequestValidationError`), so
that the error handlers answer exactly as they do elsewhere.

The endpoint keeps its annotated signature, from which FastAPI builds the OpenAPI operation;
it takes `name`, `body`, `request`, `state` and, at a version's path, `version`. No FastAPI
dependency runs for it: the route refuses its own, and none may be declared where it is
included (its router, `include_router`, the app), nor overridden.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pydantic
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from service.api.api_keys import check_api_key
from service.api.deps import AppState
from service.api.json_route import loads_json, names_json

_PASSED = {"body", "request", "state"}


class PredictionRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        body_model = _body_model(endpoint, self.param_convertors)
        path_params = tuple(self.param_convertors)
        if self.dependencies:
            raise TypeError(f"a prediction route runs no dependencies ({self.path})")

        async def predict(request: Request) -> Response:
            document = await _document(request)
            state: AppState = request.app.state.torchdock
            await check_api_key(request, state)
            body = _validated(body_model, document)
            # Only its own: a mount above it may add path parameters of its own.
            params = {name: request.path_params[name] for name in path_params}
            response: Response = await endpoint(**params, body=body, request=request, state=state)
            return response

        return predict


def _body_model(endpoint: Callable[..., Any], path_params: dict[str, Any]) -> type[Any]:
    """The pydantic model of the endpoint's body; a TypeError for a signature this handler
    would call wrongly."""
    parameters = inspect.signature(endpoint, eval_str=True).parameters
    expected = _PASSED | set(path_params)
    if set(parameters) != expected:
        raise TypeError(
            f"a prediction endpoint takes {sorted(expected)}, not {sorted(parameters)}"
            f" ({getattr(endpoint, '__name__', endpoint)})"
        )
    model = parameters["body"].annotation
    if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
        raise TypeError(f"the body of a prediction endpoint is a pydantic model, not {model!r}")
    return model


_MISSING = object()  # an empty body; JSON's null is a document, and fails validation otherwise


async def _document(request: Request) -> Any:
    """The body as FastAPI hands it to validation: missing when empty, parsed when it is JSON
    or names no content type, the bytes themselves otherwise (which then fail validation)."""
    try:
        raw = await request.body()
    except HTTPException:
        raise
    except Exception as e:
        # FastAPI's answer to a body that could not be read (the client left, say); the
        # middleware answers a body over the limit with its 413 instead.
        raise HTTPException(400, "There was an error parsing the body") from e
    if not raw:
        return _MISSING
    if not names_json(request.headers.get("content-type")):
        return raw
    try:
        return loads_json(raw)
    except json.JSONDecodeError as e:
        error = {
            "type": "json_invalid",
            "loc": ("body", e.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": e.msg},
        }
        raise RequestValidationError([error], body=e.doc) from e


def _validated(model: type[Any], document: Any) -> Any:
    if document is _MISSING:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing], body=None)
    try:
        return model.model_validate(document, from_attributes=True)  # as FastAPI validates
    except pydantic.ValidationError as e:
        errors = [
            {**error, "loc": ("body", *error["loc"])} for error in e.errors(include_url=False)
        ]
        raise RequestValidationError(errors, body=document) from None
