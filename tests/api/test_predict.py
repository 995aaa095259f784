"""V1 and V2 predictions through the ASGI app with its lifespan: correct answers, headers."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.digits_data import held_out

pytestmark = pytest.mark.integration


def _v2_body(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "pixels",
                "shape": [len(images), 8, 8],
                "datatype": "FP32",
                "data": images.reshape(-1).tolist(),
            }
        ],
        **extra,
    }


async def test_v1_accuracy_on_held_out_digits(client: httpx.AsyncClient) -> None:
    images, labels = held_out()
    predicted = []
    for start in range(0, len(images), 32):
        chunk = images[start : start + 32]
        r = await client.post("/v1/models/digits:predict", json={"instances": chunk.tolist()})
        assert r.status_code == 200, r.text
        predicted += [p["label"] for p in r.json()["predictions"]]
    accuracy = float(np.mean(np.array(predicted) == labels))
    assert accuracy >= 0.95


async def test_v2_accuracy_on_held_out_digits(client: httpx.AsyncClient) -> None:
    images, labels = held_out()
    predicted: list[int] = []
    for start in range(0, len(images), 64):
        chunk = images[start : start + 64]
        r = await client.post("/v2/models/digits/infer", json=_v2_body(chunk))
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert outputs["label"]["datatype"] == "INT64"
        assert outputs["label"]["shape"] == [len(chunk)]
        assert outputs["probabilities"]["shape"] == [len(chunk), 10]
        predicted += outputs["label"]["data"]
    assert float(np.mean(np.array(predicted) == labels)) >= 0.95


async def test_v1_response_shape_and_headers(client: httpx.AsyncClient) -> None:
    images, labels = held_out()
    r = await client.post(
        "/v1/models/digits/versions/1:predict",
        json={"instances": [images[0].tolist()]},
        headers={"X-Request-ID": "abc-123"},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    assert r.headers["x-model-version"] == "1"
    assert r.headers["x-replica-id"] == "test-replica"
    prediction = r.json()["predictions"][0]
    assert prediction["label"] == labels[0]
    assert prediction["label_name"] == str(labels[0])
    assert len(prediction["probabilities"]) == 10
    assert abs(sum(prediction["probabilities"]) - 1.0) < 1e-4


async def test_request_id_generated_when_absent_or_invalid(client: httpx.AsyncClient) -> None:
    r1 = await client.get("/v2/health/live")
    r2 = await client.get("/v2/health/live", headers={"X-Request-ID": "bad id with spaces"})
    for r in (r1, r2):
        assert len(r.headers["x-request-id"]) == 32
    assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


async def test_v1_flat_instance_and_png_image(client: httpx.AsyncClient) -> None:
    images, labels = held_out()
    digit = images[3]
    # A person's picture: dark ink on a light ground, 64x64, as PNG and as JPEG.
    picture = Image.fromarray((255 - digit * 255 / 16).astype(np.uint8)).resize(
        (64, 64), Image.Resampling.NEAREST
    )
    encoded = {}
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        picture.save(buffer, format=fmt, quality=95)
        encoded[fmt] = base64.b64encode(buffer.getvalue()).decode()
    body = {
        "instances": [
            digit.reshape(-1).tolist(),
            {"b64": encoded["PNG"]},
            {"b64": encoded["JPEG"]},
        ]
    }
    r = await client.post("/v1/models/digits:predict", json=body)
    assert r.status_code == 200, r.text
    assert [p["label"] for p in r.json()["predictions"]] == [labels[3]] * 3


async def test_v2_requested_outputs_and_id(client: httpx.AsyncClient) -> None:
    images, labels = held_out()
    body = _v2_body(images[:2], id="req-7", outputs=[{"name": "label"}])
    r = await client.post("/v2/models/digits/versions/1/infer", json=body)
    assert r.status_code == 200
    payload = r.json()
    assert payload["id"] == "req-7"
    assert payload["model_name"] == "digits"
    assert payload["model_version"] == "1"
    assert [o["name"] for o in payload["outputs"]] == ["label"]
    assert payload["outputs"][0]["data"] == labels[:2].tolist()


async def test_v2_nested_data_equals_flat(client: httpx.AsyncClient) -> None:
    images, _ = held_out()
    flat = await client.post("/v2/models/digits/infer", json=_v2_body(images[:3]))
    nested_body = _v2_body(images[:3])
    nested_body["inputs"][0]["data"] = images[:3].tolist()
    nested = await client.post("/v2/models/digits/infer", json=nested_body)
    assert flat.json()["outputs"] == nested.json()["outputs"]


async def test_v2_metadata_endpoints(client: httpx.AsyncClient) -> None:
    server = (await client.get("/v2")).json()
    assert server["name"] == "torchdock"
    assert "version" in server
    assert (await client.get("/v2/health/live")).status_code == 200
    ready = await client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}
    meta = (await client.get("/v2/models/digits")).json()
    assert meta["name"] == "digits"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch_torchexport"
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 8, 8]}]
    assert {o["name"] for o in meta["outputs"]} == {"label", "probabilities"}
    version_meta = await client.get("/v2/models/digits/versions/1")
    assert version_meta.status_code == 200
    assert version_meta.headers["x-model-version"] == "1"
    assert (await client.get("/v2/models/digits/ready")).status_code == 200
    assert (await client.get("/v2/models/digits/versions/1/ready")).json()["ready"] is True


async def test_v1_model_list(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()["models"]
    assert [m["name"] for m in models] == ["digits", "minilm"]
    digits = models[0]
    assert digits["ready"] is True
    assert digits["default_version"] == "1"
    assert digits["versions"][0]["precision"] == "fp32"
    assert digits["versions"][0]["metrics"]["held_out_accuracy"] >= 0.95


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    assert "/v1/models/{name}:predict" in spec["paths"]
    # One endpoint at both paths: `version` is a path parameter at one, absent at the other.
    for default, versioned in (
        ("/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"),
        ("/v1/models/{name}:predict", "/v1/models/{name}/versions/{version}:predict"),
        ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"),
        ("/v2/models/{name}/ready", "/v2/models/{name}/versions/{version}/ready"),
    ):
        (default_op,) = spec["paths"][default].values()
        (versioned_op,) = spec["paths"][versioned].values()
        assert [p["name"] for p in default_op["parameters"] if p["in"] != "header"] == ["name"]
        assert {(p["name"], p["in"]) for p in versioned_op["parameters"]} >= {
            ("name", "path"),
            ("version", "path"),
        }
        assert default_op["operationId"] != versioned_op["operationId"]
    assert (await client.get("/docs")).status_code == 200
