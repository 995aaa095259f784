"""The friendly JSON API: `{"instances": [...]}` in, `{"predictions": [...]}` out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.api_keys import MetadataKey
from service.api.deps import State
from service.api.inference import (
    PredictionRecord,
    check_instance_count,
    decoded,
    json_response,
)
from service.api.json_route import OrjsonRoute
from service.api.prediction_route import PredictionRoute
from service.api.schemas import PredictRequest
from service.api.versioned_route import versioned_route

router = APIRouter(prefix="/v1", tags=["v1"], strict_content_type=False, route_class=OrjsonRoute)
# Its own router, so that the app can try it before every other route (see create_app).
predictions = APIRouter(prefix="/v1", tags=["v1"], route_class=PredictionRoute)


@router.get(
    "/models",
    summary="Every model served here, with its versions and state",
    dependencies=[MetadataKey],
)
async def list_models(state: State) -> Response:
    models: list[dict[str, Any]] = []
    for entry in state.registry.entries.values():
        default = entry.versions[entry.default_version] if entry.versions else None
        manifest = default.manifest if default else None
        models.append(
            {
                "name": entry.name,
                "default_version": str(entry.default_version) if entry.versions else None,
                "task": manifest.task if manifest else None,
                "ready": bool(default and default.ready),
                "versions": [
                    {
                        "version": str(v.version),
                        "ready": v.ready,
                        "error": v.error,
                        "precision": v.model.precision.precision if v.model else None,
                        "runtime": v.model.runtime.runtime if v.model else None,
                        "device": str(v.model.device) if v.model else None,
                        "max_batch_size": v.model.batcher.max_batch_size if v.model else None,
                        "metrics": v.manifest.metrics if v.manifest else {},
                    }
                    for v in entry.versions.values()
                ],
            }
        )
    return json_response({"models": models})


@versioned_route(predictions, "POST", "/models/{name}{version}:predict", summary="Predict")
async def predict_instances(
    name: str, version: str | None, body: PredictRequest, request: Request, state: State
) -> Response:
    with PredictionRecord(state, request, name, version) as record:
        await record.capture_body()
        model = record.route()
        rows = body.rows([spec.name for spec in model.manifest.inputs])
        record.instances = len(rows)
        check_instance_count(model, len(rows))
        items = await decoded(state, model, model.handler.instances_from_json, rows)
        outcome = await record.predict(items)
        record.response = json_response(
            {
                "model_name": model.name,
                "model_version": str(model.version),
                "predictions": model.handler.predictions_to_json(outcome.predictions),
            },
            version=model.version,
            cache=outcome.cache_result,
        )
        return record.response
