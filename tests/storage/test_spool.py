"""Spool replay is exactly-once: a replay cut short by a crash can run again without duplicates."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import psycopg
import pytest

from service.storage import migrate
from service.storage.prediction_log import INSERT_SQL, PostgresLog, PredictionRow
from service.storage.spool import Spool, read_lines

pytestmark = pytest.mark.integration


def row(request_id: str) -> PredictionRow:
    return PredictionRow(
        request_id=request_id,
        created_at=dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC),
        model_name="digits",
        model_version=1,
        client_addr="127.0.0.1",
        status_code=200,
        cache_result="miss",
        instances=1,
        batch_size=1,
        queue_ms=0.5,
        inference_ms=1.0,
        total_ms=2.0,
        input_digest="a" * 32,
        output_digest="b" * 32,
        input_payload=b"\x00in",
        output_payload=None,
        payload_cap_bytes=16,
        replica_id="r1",
        error_type=None,
    )


def test_row_survives_the_json_round_trip() -> None:
    original = row("x")
    assert PredictionRow.from_json(original.to_json()) == original


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([row("a").to_json(), row("b").to_json()])
    spool.close()
    (path,) = tmp_path.glob("active-*.jsonl")
    with path.open("ab") as f:
        f.write(b'{"request_id": "torn')  # a crash mid-write
    assert [PredictionRow.from_json(x).request_id for x in read_lines(path)] == ["a", "b"]


async def test_replay_after_a_partial_replay_creates_no_duplicates(
    database_url: str, tmp_path: Path
) -> None:
    await migrate.upgrade(database_url)
    dead_pid = 2**22 + 12345  # above pid_max: never a live process
    dead_owner = f"{dead_pid}.0badc0de"
    spooled = [row(f"r{i}") for i in range(5)]
    (tmp_path / f"replaying-{dead_owner}-ready-{dead_owner}-0.jsonl").write_bytes(
        b"".join(r.to_json() + b"\n" for r in spooled)
    )
    # It died after committing the first two rows of its replay.
    with psycopg.connect(database_url) as conn:
        conn.cursor().executemany(INSERT_SQL, [r.values() for r in spooled[:2]])
    log = PostgresLog(database_url, spool_dir=tmp_path, replay_interval_s=0.05)
    await log.start()
    try:
        for _ in range(100):
            if not list(tmp_path.glob("*.jsonl")):
                break
            await asyncio.sleep(0.05)
    finally:
        await log.stop()
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT request_id FROM predictions").fetchall()]
    assert sorted(ids) == [f"r{i}" for i in range(5)]
    assert list(tmp_path.glob("*.jsonl")) == []


async def test_a_batch_with_a_duplicate_still_lands_once(database_url: str, tmp_path: Path) -> None:
    await migrate.upgrade(database_url)
    log = PostgresLog(database_url, spool_dir=tmp_path)
    await log.start()
    try:
        # The same row twice, as after a write that was cancelled midway and retried: the
        # COPY fails on the key, and the fallback inserts what is missing.
        for r in (row("dup"), row("dup"), row("other")):
            log.record(r)
    finally:
        await log.stop()
    with psycopg.connect(database_url) as conn:
        ids = sorted(r[0] for r in conn.execute("SELECT request_id FROM predictions"))
    assert ids == ["dup", "other"]
    assert list(tmp_path.glob("*.jsonl")) == []
    assert not (tmp_path / "dead-letter.jsonl.rejected").exists()
