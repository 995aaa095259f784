"""Admin endpoints, off by default: reading the prediction log back."""

from __future__ import annotations

import base64
import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Header
from starlette.responses import Response

from service.api.deps import State
from service.api.inference import json_response
from service.api.problems import Problem

router = APIRouter(prefix="/v1", tags=["admin"])


def _authorise(state: State, authorization: str | None) -> None:
    token = state.settings.admin_token
    if not state.settings.prediction_lookup or token is None:
        raise Problem(404, "not-found", "Not found", "prediction lookup is not enabled")
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    # Constant time: the comparison must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
        raise Problem(
            401,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


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
