"""The real server: gunicorn master, uvicorn workers, multiprocess metrics, SIGTERM draining."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import StartServer
from tests.digits_data import held_out
from tests.prom import sample_value
from tests.system.server import ServerProcess

pytestmark = pytest.mark.system


def test_serves_predictions_and_aggregates_metrics(start_server: StartServer) -> None:
    server = start_server(workers=2)
    images, labels = held_out()
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        correct = 0
        for i in range(40):
            r = http.post(
                "/v1/models/digits:predict",
                json={"instances": [images[i].tolist()]},
                headers={"X-Request-ID": f"e2e-{i}"},
            )
            assert r.status_code == 200
            assert r.headers["x-request-id"] == f"e2e-{i}"
            correct += r.json()["predictions"][0]["label"] == labels[i]
        v2 = http.post(
            "/v2/models/digits/infer",
            json={
                "inputs": [
                    {
                        "name": "pixels",
                        "shape": [1, 8, 8],
                        "datatype": "FP32",
                        "data": images[0].reshape(-1).tolist(),
                    }
                ]
            },
        )
        assert v2.status_code == 200
        assert v2.json()["outputs"][0]["data"] == [labels[0]]
        metrics = http.get("/metrics").text
    assert correct >= 38
    # One scrape sees the requests of every worker (multiprocess mode).
    total = sample_value(
        metrics,
        "torchdock_http_requests_total",
        method="POST",
        route="/v1/models/{name}:predict",
        status="200",
    )
    assert total == 40
    # Sequential requests: each is one batch. Warm-up forwards are not counted.
    batches = sample_value(
        metrics, "torchdock_batch_size_count", model_name="digits", model_version="1"
    )
    assert batches == 41
    for line in server.log_text().splitlines():
        if '"e2e-7"' in line:
            record = json.loads(line)
            assert record["request_id"] == "e2e-7"
            assert record["status"] == 200
            break
    else:
        pytest.fail("no JSON access line carries the request id e2e-7")


def test_a_burst_of_keepalive_connections_is_spread_over_the_workers(
    start_server: StartServer,
) -> None:
    # A client pool opening its connections at once: the worker woken first used to take all
    # of them, and with one request per connection at a time it got all of the load too.
    server = start_server(workers=2)

    def held_per_worker() -> dict[int, int]:
        return {
            worker.pid: sum(
                1
                for c in worker.net_connections(kind="tcp")
                if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == server.port
            )
            for worker in psutil.Process(server.process.pid).children()
        }

    async def burst() -> dict[int, int]:
        async def one() -> asyncio.StreamWriter:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: test\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")  # answered, so a worker has accepted it
            return writer

        writers = await asyncio.gather(*(one() for _ in range(32)))
        held = held_per_worker()
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        return held

    held = asyncio.run(burst())
    assert sum(held.values()) == 32
    assert min(held.values()) >= 10, f"connections per worker: {held}"


def test_sigterm_drains_then_exits(start_server: StartServer) -> None:
    # Each request waits 1.5 s in the batcher, so one is surely in flight at SIGTERM.
    server = start_server(
        workers=1,
        MODEL_SETTINGS=json.dumps({"digits": {"max_batch_delay_ms": 1000}}),
        DRAIN_DELAY_S="1.5",
        GRACEFUL_TIMEOUT_S="20",
    )
    result: dict[str, httpx.Response] = {}

    def slow_request() -> None:
        zeros = [[0.0] * 8] * 8
        result["r"] = httpx.post(
            f"{server.base_url}/v1/models/digits:predict", json={"instances": [zeros]}, timeout=30
        )

    worker = threading.Thread(target=slow_request)
    worker.start()
    time.sleep(0.4)
    os.kill(server.process.pid, signal.SIGTERM)
    time.sleep(0.4)
    ready = httpx.get(f"{server.base_url}/v2/health/ready", timeout=5)
    assert ready.status_code == 503, "readiness must fail as soon as draining starts"
    assert ready.headers["connection"] == "close", "uvicorn must close after each response"
    worker.join(timeout=30)
    assert result["r"].status_code == 200, "the in-flight request must finish"
    assert server.process.wait(timeout=30) == 0
    log = server.log_text()
    assert "draining" in log
    assert log.index("draining") < log.index("worker stopped")


def failed_start(log_path: Path, model_repo: Path, **env: str) -> tuple[int, str]:
    """A server that must refuse to start: its exit status and its log."""
    server = ServerProcess(
        env={"MODEL_REPOSITORY": str(model_repo), **env}, workers=1, log_path=log_path
    )
    try:
        code = server.process.wait(timeout=60)
    finally:
        server.stop()
    return code, server.log_text()


def test_shadow_cpus_are_kept_from_the_workers(
    start_server: StartServer, model_repo: Path, tmp_path: Path
) -> None:
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs two CPUs: one to serve on, one for the shadows")
    shadow_cpu = max(allowed)  # SHADOW_CPUS=1: the highest-numbered
    server = start_server(workers=2, SHADOW_CPUS="1")
    workers = psutil.Process(server.process.pid).children()
    assert len(workers) == 2
    for worker in workers:
        for thread in worker.threads():
            assert os.sched_getaffinity(thread.id) == allowed - {shadow_cpu}, worker.pid
    started = [json.loads(line) for line in server.log_text().splitlines()
               if '"starting worker"' in line]  # fmt: skip
    assert [r["cpus"] for r in started] == [sorted(allowed - {shadow_cpu})] * 2

    code, log = failed_start(tmp_path / "every-cpu.log", model_repo, SHADOW_CPUS=str(len(allowed)))
    assert code == 2
    assert "none is left to serve" in log


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="needs a machine without a CUDA device"
)
def test_cuda_without_gpu_fails_fast(model_repo: Path, tmp_path: Path) -> None:
    code, log = failed_start(tmp_path / "cuda.log", model_repo, DEVICE="cuda", LOG_FORMAT="json")
    assert code != 0
    assert "DEVICE=cuda but no CUDA device is visible" in log
