"""The Open Inference Protocol's model repository extension, as Triton implements it.

`POST /v2/repository/index`, `.../models/{name}/load` and `.../unload`; tritonclient's
get_model_repository_index, load_model and unload_model work unchanged. Every route needs the
admin token (`Authorization: Bearer`), since loading is as powerful as deploying.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from service.api.admin_auth import require_admin_token
from service.api.deps import State
from service.api.inference import json_response
from service.api.problems import Problem

router = APIRouter(prefix="/v2/repository", tags=["repository"])
Authorization = Annotated[str | None, Header()]


async def _body(request: Request) -> dict[str, Any]:
    """tritonclient sends an empty body to the index and `{}` or parameters elsewhere."""
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise Problem(400, "malformed-json", "Malformed JSON", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Problem(400, "invalid-request", "Invalid request", "the body is not an object")
    return body


@router.post("/index", summary="Every model version in the repository, and its state")
async def repository_index(
    request: Request, state: State, authorization: Authorization = None
) -> Response:
    require_admin_token(state.settings, authorization)
    ready_only = (await _body(request)).get("ready") is True
    return json_response(state.model_control.index(ready_only=ready_only))


@router.post("/models/{name}/load", summary="Load or reload a model (MODEL_CONTROL=explicit)")
async def load(
    name: str, request: Request, state: State, authorization: Authorization = None
) -> Response:
    require_admin_token(state.settings, authorization)
    body = await _body(request)
    if set(body.get("parameters") or {}) - {"unload_dependents"}:
        raise Problem(
            400,
            "unsupported-parameter",
            "Unsupported parameter",
            "load takes no config or file overrides: package the model into the repository",
        )
    await state.model_control.load(name)
    return json_response({})


@router.post("/models/{name}/unload", summary="Unload a model (MODEL_CONTROL=explicit)")
async def unload(
    name: str, request: Request, state: State, authorization: Authorization = None
) -> Response:
    require_admin_token(state.settings, authorization)
    await _body(request)
    await state.model_control.unload(name)
    return json_response({})
