"""Readiness transitions, draining, batching through the API, metrics, and broken models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.packaging.bundled import digits
from tests.conftest import SettingsFactory, serve
from tests.digits_data import ZEROS
from tests.prom import sample_value

pytestmark = pytest.mark.integration

LABELS = {"model_name": "digits", "model_version": "1"}
PREDICT = "/v1/models/digits:predict"


def grid(i: int) -> list[list[float]]:
    """A different instance for each i: identical ones are computed once (single-flight)."""
    return [[float(i % 17)] * 8 for _ in range(8)]


async def concurrent_batches(settings: Settings, requests: int) -> tuple[float, float]:
    """Send `requests` different single-instance requests at once; (forwards, instances)."""
    async with serve(settings) as http:
        before = (await http.get("/metrics")).text
        responses = await asyncio.gather(
            *(http.post(PREDICT, json={"instances": [grid(i)]}) for i in range(requests))
        )
        after = (await http.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)

    def delta(name: str) -> float:
        return sample_value(after, name, **LABELS) - sample_value(before, name, **LABELS)

    return delta("torchdock_batch_size_count"), delta("torchdock_batch_size_sum")


async def test_concurrent_requests_share_one_forward(make_settings: SettingsFactory) -> None:
    settings = make_settings(model_settings={"digits": {"max_batch_delay_ms": 300}})
    assert await concurrent_batches(settings, 16) == (1, 16)


async def test_batching_off_runs_one_request_per_forward(make_settings: SettingsFactory) -> None:
    settings = make_settings(model_settings={"digits": {"batching": False}})
    assert await concurrent_batches(settings, 6) == (6, 6)


async def test_draining_fails_readiness_but_finishes_in_flight(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(model_settings={"digits": {"max_batch_delay_ms": 500}})
    server = serve(settings)
    async with server as http:
        first = await http.get("/v2/health/ready")
        assert first.status_code == 200
        assert first.headers.get("connection") != "close"
        in_flight = asyncio.create_task(
            http.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
        )
        await asyncio.sleep(0.1)
        server.app.state.torchdock.lifecycle.begin_drain()
        ready = await http.get("/v2/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False}
        # A draining replica closes every connection after its response, so that a load
        # balancer's pool holds no keep-alive connection to it when its listener closes.
        assert ready.headers["connection"] == "close"
        live = await http.get("/v2/health/live")
        assert live.status_code == 200
        assert live.headers["connection"] == "close"
        assert (await in_flight).status_code == 200


async def test_metrics_exposed_and_labelled(client: httpx.AsyncClient) -> None:
    await client.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
    r = await client.get("/metrics")
    assert r.status_code == 200
    text = r.text
    for series in (
        "torchdock_inference_request_duration_seconds_bucket",
        "torchdock_queue_wait_seconds_bucket",
        "torchdock_inference_duration_seconds_bucket",
        "torchdock_batch_size_bucket",
    ):
        assert sample_value(text, series.replace("_bucket", "_count"), **LABELS) >= 1, series
        assert f'{series}{{le="+Inf",model_name="digits",model_version="1"}}' in text
    assert sample_value(text, "torchdock_model_load_seconds", **LABELS) > 0
    assert sample_value(text, "torchdock_model_ready", **LABELS) == 1
    assert "torchdock_queue_depth" in text
    assert "torchdock_inflight_requests" in text


async def test_prediction_requests_are_counted_by_model_and_status(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
    await client.post("/v1/models/digits:predict", json={"instances": ["not an image"]})
    await client.post("/v1/models/no-such-model:predict", json={"instances": [ZEROS]})
    text = (await client.get("/metrics")).text
    name = "torchdock_prediction_requests_total"
    assert sample_value(text, name, **LABELS, status="200") >= 1
    assert sample_value(text, name, **LABELS, status="422") >= 1
    # Latency covers failed requests too, so that the latency objective sees them.
    latency = "torchdock_inference_request_duration_seconds_count"
    before = sample_value(text, latency, **LABELS)
    await client.post("/v1/models/digits:predict", json={"instances": ["not an image"]})
    after = sample_value((await client.get("/metrics")).text, latency, **LABELS)
    assert after == before + 1
    # A client-chosen model name never becomes a label value.
    unknown = {"model_name": "_unknown", "model_version": "", "status": "404"}
    assert sample_value(text, name, **unknown) >= 1
    assert "no-such-model" not in text
    assert "torchdock_rejected_requests_total" in text
    assert (
        sample_value(
            text,
            "torchdock_http_requests_total",
            method="POST",
            route="/v1/models/{name}:predict",
            status="200",
        )
        >= 1
    )


async def test_zero_models_is_not_ready(make_settings: SettingsFactory, tmp_path: Path) -> None:
    async with serve(make_settings(model_repository=tmp_path)) as http:
        assert (await http.get("/v2/health/live")).status_code == 200
        assert (await http.get("/v2/health/ready")).status_code == 503
    async with serve(make_settings(model_repository=tmp_path / "missing")) as http:
        assert (await http.get("/v2/health/ready")).status_code == 503


async def test_missing_configured_model_is_not_ready(make_settings: SettingsFactory) -> None:
    async with serve(make_settings(models=["digits", "absent"])) as http:
        assert (await http.get("/v2/health/ready")).status_code == 503
        r = await http.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
        assert r.status_code == 200


async def test_corrupt_version_fails_alone(make_settings: SettingsFactory, repo_copy: Path) -> None:
    """A corrupt v2 of one model: that version fails clearly, v1 and other models still serve."""
    digits.build(repo_copy, name="other")
    corrupt = repo_copy / "digits" / "2"
    corrupt.mkdir()
    manifest = json.loads((repo_copy / "digits" / "1" / "manifest.json").read_text())
    manifest["version"] = 2
    (corrupt / "manifest.json").write_text(json.dumps(manifest))
    artifact = bytearray((repo_copy / "digits" / "1" / "model.pt2").read_bytes())
    artifact[len(artifact) // 2] ^= 0xFF
    (corrupt / "model.pt2").write_bytes(bytes(artifact))

    async with serve(make_settings(model_repository=repo_copy, models=[])) as http:
        # The default (highest) version of digits is broken: never silently serve v1 instead.
        r = await http.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
        assert r.status_code == 503
        assert "sha256 mismatch" in r.json()["detail"]
        ready = await http.get("/v2/models/digits/versions/2/ready")
        assert ready.status_code == 503
        assert (await http.get("/v2/health/ready")).status_code == 503
        meta = (await http.get("/v2/models/digits/versions/2")).json()
        assert "sha256 mismatch" in meta["error"]
        v1 = await http.post("/v1/models/digits/versions/1:predict", json={"instances": [ZEROS]})
        assert v1.status_code == 200
        other = await http.post("/v1/models/other:predict", json={"instances": [ZEROS]})
        assert other.status_code == 200


async def test_highest_version_is_default(make_settings: SettingsFactory, repo_copy: Path) -> None:
    digits.build(repo_copy, version=3)
    async with serve(make_settings(model_repository=repo_copy)) as http:
        r = await http.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
        assert r.headers["x-model-version"] == "3"
        r1 = await http.post("/v1/models/digits/versions/1:predict", json={"instances": [ZEROS]})
        assert r1.headers["x-model-version"] == "1"
        assert (await http.get("/v2/models/digits")).json()["versions"] == ["1", "3"]
