"""kill -9 of a worker between spooling and replay loses no fsync'd row.

The guarantee window: while Postgres is down, a row reaches the spool within the writer's
flush interval (0.1 s) and is fsync'd within the sync interval (0.1 s) after that. Rows still
in the worker's memory when it is SIGKILLed are lost; this test waits 1 s past the last
response, well outside that window, so every row must survive.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.faults import TcpProxy
from tests.storage.test_prediction_log import proxied, target_of
from tests.system.server import ServerProcess

pytestmark = pytest.mark.system


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(p) for p in children.read_text().split()]


def test_sigkill_between_spool_and_replay(
    model_repo: Path, database_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(*target_of(database_url))
    spool = tmp_path / "spool"
    server = ServerProcess(
        env={
            "MODEL_REPOSITORY": str(model_repo),
            "MODELS": '["digits"]',
            "DEVICE": "cpu",
            "DATABASE_URL": proxied(database_url, proxy),
            "SPOOL_DIR": str(spool),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        },
        workers=1,
        log_path=tmp_path / "server.log",
    )
    try:
        server.wait_ready()
        proxy.down()
        zeros = [[0.0] * 8] * 8
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            for i in range(200):
                r = http.post(
                    "/v1/models/digits:predict",
                    json={"instances": [zeros]},
                    headers={"X-Request-ID": f"crash-{i}"},
                )
                assert r.status_code == 200
        time.sleep(1.0)
        spooled = sum(len(p.read_text().splitlines()) for p in spool.glob("*.jsonl"))
        assert spooled == 200
        (victim,) = worker_pids(server.process.pid)
        os.kill(victim, signal.SIGKILL)
        proxy.up()
        deadline = time.monotonic() + 60
        count = 0
        while time.monotonic() < deadline:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT request_id) FROM predictions"
                ).fetchone()
            assert row is not None
            count, distinct = row
            if count >= 200:
                break
            time.sleep(0.3)
        assert (count, distinct) == (200, 200)
        assert victim not in worker_pids(server.process.pid)
    finally:
        server.stop()
        proxy.close()
