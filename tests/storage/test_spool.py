"""The spool: replay is exactly-once, a file is replayed by whoever outlives its writer, and
the spool is bounded in bytes and in the size of one file."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from service.storage import migrate
from service.storage.prediction_log import INSERT_SQL, PostgresLog, PredictionRow
from service.storage.spool import Spool, SpoolFull, iter_batches

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
    lines = [line for batch in iter_batches(path, 500) for line in batch]
    assert [PredictionRow.from_json(x).request_id for x in lines] == ["a", "b"]


def hold_lock(path: Path) -> subprocess.Popen[bytes]:
    """Another process (as a replica in another container would) writing `path`, locked."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(path)!r}, 'ab')\n"
            "fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
    return holder


def test_a_file_is_replayed_when_its_writer_is_gone_whatever_its_pid(tmp_path: Path) -> None:
    # Finding 6: liveness was a PID check, meaningless across containers sharing a volume. A
    # removed replica's file named after PID 1 (alive here: every container has one) was never
    # replayed, and a live writer's file named after a PID unused here was taken mid-write.
    spool = Spool(tmp_path)
    orphan = tmp_path / "active-1.0badc0de.jsonl"
    orphan.write_bytes(row("orphan").to_json() + b"\n")
    live = tmp_path / f"active-{2**22 + 12345}.0badc0de.jsonl"
    live.write_bytes(row("live").to_json() + b"\n")
    holder = hold_lock(live)
    try:
        claimed = list(spool.claim())
        assert [p.name for p in claimed] == [f"replaying-{spool.owner}-active-1.0badc0de.jsonl"]
        assert live.exists()
    finally:
        holder.communicate(b"")
    assert [p.name for p in spool.claim()] == [
        f"replaying-{spool.owner}-{live.name}",
        f"replaying-{spool.owner}-active-1.0badc0de.jsonl",
    ]


def test_a_file_being_replayed_is_not_claimed_twice(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    (tmp_path / "ready-7.0badc0de-0.jsonl").write_bytes(row("r").to_json() + b"\n")
    claims = first.claim()
    path = next(claims)  # locked while first replays it
    assert list(second.claim()) == []
    claims.close()  # first gave up: the file waits for the next round, under its original name
    (again,) = second.claim()
    assert again.name == f"replaying-{second.owner}-ready-7.0badc0de-0.jsonl"
    assert not path.exists()


def test_the_active_file_rotates_at_its_size_and_others_never_claim_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path, file_bytes=2000)
    line = row("x").to_json()
    for _ in range(10):
        spool.append([line])
    ready = sorted(tmp_path.glob("ready-*.jsonl"))
    # A file rotates once it holds 2000 bytes: after this many lines (and their newlines).
    lines_per_file = -(-2000 // (len(line) + 1))
    assert len(ready) == 10 // lines_per_file >= 2
    assert all(p.stat().st_size >= 2000 for p in ready)
    (active,) = tmp_path.glob("active-*.jsonl")
    assert active.name not in {p.name for p in Spool(tmp_path).claim()}
    spool.close()


def test_the_spool_refuses_rows_past_its_limit(tmp_path: Path) -> None:
    line = row("x").to_json()
    spool = Spool(tmp_path, max_bytes=(len(line) + 1) * 3)
    spool.append([line, line, line])
    with pytest.raises(SpoolFull):
        spool.append([line])
    spool.rotate()
    # Another replica sharing the directory counts too, from the next recount on.
    other = Spool(tmp_path)
    other.append([line])
    other.close()
    assert spool.pending_bytes() == (len(line) + 1) * 4
    with pytest.raises(SpoolFull):
        spool.append([line])
    for path in spool.claim():
        path.unlink()
    spool.pending_bytes()
    spool.append([line])
    spool.close()


def test_replay_reads_a_file_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "ready-7.0badc0de-0.jsonl"
    path.write_bytes(b"".join(row(f"r{i}").to_json() + b"\n" for i in range(1200)))
    assert [len(b) for b in iter_batches(path, 500)] == [500, 500, 200]


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
