"""Open Inference Protocol (KServe V2) REST, JSON tensors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service import __version__
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
from service.api.routing import parse_version
from service.api.schemas import InferenceRequest
from service.api.tensors import decode_inputs, encode_outputs, select_outputs
from service.api.versioned_route import versioned_route
from service.runtime.errors import ModelNotReady

# V2 clients (tritonclient, for one) send JSON without a Content-Type: parse it anyway.
router = APIRouter(prefix="/v2", tags=["v2"], strict_content_type=False, route_class=OrjsonRoute)
# Its own router, so that the app can try it before every other route (see create_app).
predictions = APIRouter(prefix="/v2", tags=["v2"], route_class=PredictionRoute)
PLATFORM = "pytorch_torchexport"


@router.get("", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "torchdock", "version": __version__, "extensions": []})


@router.get("/health/live", summary="Server liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", summary="Server readiness: every configured model loaded and warm")
async def ready(state: State) -> Response:
    is_ready = state.registry.ready and not state.lifecycle.draining
    return json_response({"ready": is_ready}, status=200 if is_ready else 503)


@versioned_route(
    router, "GET", "/models/{name}{version}", summary="Model metadata", dependencies=[MetadataKey]
)
async def model_metadata(name: str, version: str | None, state: State) -> Response:
    chosen = state.registry.state(name, parse_version(version, model=name))
    entry = state.registry.entries[name]
    manifest = chosen.manifest
    body: dict[str, Any] = {
        "name": name,
        "versions": [str(v) for v in sorted(entry.versions)],
        "platform": PLATFORM,
    }
    if manifest is not None:
        body["inputs"] = [spec.model_dump() for spec in manifest.inputs]
        body["outputs"] = [spec.model_dump() for spec in manifest.outputs]
        body["parameters"] = {"task": manifest.task, "max_batch_size": manifest.max_batch_size}
    if chosen.error is not None:
        body["error"] = chosen.error
    return json_response(body, version=chosen.version)


@versioned_route(
    router,
    "GET",
    "/models/{name}{version}/ready",
    summary="Model readiness",
    dependencies=[MetadataKey],
)
async def model_ready(name: str, version: str | None, state: State) -> Response:
    chosen = state.registry.state(name, parse_version(version, model=name))
    if not chosen.ready:
        raise ModelNotReady(
            f"model {name!r} version {chosen.version} is not loaded: {chosen.error}"
        )
    body = {"name": name, "version": str(chosen.version), "ready": True}
    return json_response(body, version=chosen.version)


@versioned_route(predictions, "POST", "/models/{name}{version}/infer", summary="Inference")
async def infer(
    name: str, version: str | None, body: InferenceRequest, request: Request, state: State
) -> Response:
    with PredictionRecord(state, request, name, version) as record:
        await record.capture_body()
        model = record.route()
        manifest = model.manifest
        tensors = decode_inputs(body.inputs, manifest.inputs)
        record.instances = len(next(iter(tensors.values())))
        check_instance_count(model, record.instances)
        items = await decoded(state, model, model.handler.instances_from_tensors, tensors)
        requested = [o.name for o in body.outputs] if body.outputs is not None else None
        # Checked before compute, so that a bad `outputs` list costs no forward pass.
        selected = select_outputs(manifest.outputs, requested)
        outcome = await record.predict(items)
        outputs = encode_outputs(
            model.handler.predictions_to_tensors(outcome.predictions), selected
        )
        payload: dict[str, Any] = {
            "model_name": model.name,
            "model_version": str(model.version),
            "outputs": outputs,
        }
        if body.id is not None:
            payload["id"] = body.id
        record.response = json_response(payload, version=model.version, cache=outcome.cache_result)
        return record.response
