"""Admin endpoints, off by default: reading the prediction log back."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.responses import Response

from service.api.admin_auth import require_admin_token
from service.api.deps import State
from service.api.inference import json_response
from service.api.problems import Problem

router = APIRouter(prefix="/v1", tags=["admin"])


def _authorise(state: State, authorization: str | None) -> None:
    if not state.settings.prediction_lookup or state.settings.admin_token is None:
        raise Problem(404, "not-found", "Not found", "prediction lookup is not enabled")
    require_admin_token(state.settings, authorization)


@router.get("/predictions/{request_id}", summary="Prediction-log rows of one request (admin)")
async def get_prediction(
    request_id: str,
    state: State,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    _authorise(state, authorization)
    log = state.prediction_log
    if not log.enabled:
        raise Problem(404, "not-found", "Not found", "the prediction log is not configured")
    rows: list[dict[str, Any]] = await log.fetch(request_id)
    if not rows:
        raise Problem(
            404, "prediction-not-found", "Prediction not found", f"no row for {request_id!r}"
        )
    for row in rows:
        row["created_at"] = row["created_at"].isoformat()
        for name in ("input_payload", "output_payload"):
            if row[name] is not None:
                row[name] = base64.b64encode(bytes(row[name])).decode()
    return json_response({"request_id": request_id, "rows": rows})
