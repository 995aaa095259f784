"""Admin endpoints, off by default: reading the prediction log back."""

from __future__ import annotations

import base64
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from service.api.admin_auth import require_admin_token
from service.api.deps import State
from service.api.inference import json_response
from service.api.problems import Problem
from service.storage.prediction_log import PredictionLog

router = APIRouter(prefix="/v1", tags=["admin"])


def _authorise(state: State, authorization: str | None) -> None:
    if not state.settings.prediction_lookup or state.settings.admin_token is None:
        raise Problem(404, "not-found", "Not found", "prediction lookup is not enabled")
    require_admin_token(state.settings, authorization)


@router.get("/predictions/{prediction_id}", summary="One prediction-log row (admin)")
async def get_prediction(
    prediction_id: uuid.UUID,
    state: State,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """By the id that the prediction's response carried in `X-Prediction-ID`."""
    log = _log(state, authorization)
    row = await log.fetch_one(prediction_id)
    if row is None:
        raise Problem(
            404, "prediction-not-found", "Prediction not found", f"no row {prediction_id}"
        )
    return json_response({"prediction_id": str(prediction_id), "row": _shown(row)})


@router.get("/predictions", summary="Prediction-log rows under one request id (admin)")
async def find_predictions(
    request_id: Annotated[str, Query(min_length=1, max_length=128)],
    state: State,
    authorization: Annotated[str | None, Header()] = None,
) -> Response:
    """Every row logged under a request id, oldest first. Clients choose their request ids,
    and two may choose the same: each row says its own prediction id and client."""
    log = _log(state, authorization)
    rows = await log.fetch(request_id)
    if not rows:
        raise Problem(
            404, "prediction-not-found", "Prediction not found", f"no row for {request_id!r}"
        )
    return json_response({"request_id": request_id, "rows": [_shown(row) for row in rows]})


def _log(state: State, authorization: str | None) -> PredictionLog:
    _authorise(state, authorization)
    if not state.prediction_log.enabled:
        raise Problem(404, "not-found", "Not found", "the prediction log is not configured")
    return state.prediction_log


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    row["created_at"] = row["created_at"].isoformat()
    row["prediction_id"] = str(row["prediction_id"])
    for name in ("input_payload", "output_payload"):
        if row[name] is not None:
            row[name] = base64.b64encode(bytes(row[name])).decode()
    return row
