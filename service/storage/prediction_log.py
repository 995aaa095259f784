"""The prediction log: one Postgres row per prediction request, written off the hot path.

The request path only puts a row on a bounded in-memory queue (`record`, never blocking). A
background writer inserts rows in batches from an `AsyncConnectionPool`. When Postgres is down
or slow, or the queue is full, rows go to the local spool (fsync'd in batches) and are replayed
once Postgres answers again. Durability window: a row is safe once it is in Postgres, or
`sync_interval_s` after it reached the spool; rows still in the memory queue when a worker is
SIGKILLed are lost (graceful shutdown flushes them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from service.observability import metrics
from service.storage.spool import MAX_BYTES, Spool, iter_batches, open_append

logger = logging.getLogger(__name__)

_PREPARE_TIMEOUT_S = 300.0
# Where a request's prediction id waits in the ASGI scope's state, for the X-Prediction-ID header.
PREDICTION_ID_STATE = "torchdock_prediction_id"


@dataclass(frozen=True, slots=True)
class PredictionRow:
    request_id: str
    created_at: dt.datetime
    model_name: str
    model_version: int
    client_addr: str | None
    status_code: int
    cache_result: str
    instances: int
    batch_size: int | None
    queue_ms: float | None
    inference_ms: float | None
    total_ms: float
    input_digest: str | None
    output_digest: str | None
    input_payload: bytes | None
    output_payload: bytes | None
    payload_cap_bytes: int
    replica_id: str | None
    error_type: str | None
    # The row's own key; spool lines of earlier releases have none, and get one on replay.
    prediction_id: uuid.UUID = field(default_factory=uuid.uuid4)
    api_key_id: str | None = None
    # Rollouts (migration 0006): how the row was served, and for a shadow, the version it
    # shadowed and how far apart the two were on these instances.
    role: str = "primary"
    compared_version: int | None = None
    agreement: float | None = None
    agreement_kind: str | None = None

    def to_json(self) -> bytes:
        data = asdict(self)
        for name in ("input_payload", "output_payload"):
            if data[name] is not None:
                data[name] = base64.b64encode(data[name]).decode()
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, line: bytes) -> PredictionRow:
        data = orjson.loads(line)
        data["created_at"] = dt.datetime.fromisoformat(data["created_at"])
        for name in ("input_payload", "output_payload"):
            if data[name] is not None:
                data[name] = base64.b64decode(data[name])
        if "prediction_id" in data:
            data["prediction_id"] = uuid.UUID(data["prediction_id"])
        return cls(**data)

    def values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


COLUMNS = tuple(f.name for f in fields(PredictionRow))
INSERT_SQL = (
    f"INSERT INTO predictions ({', '.join(COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)
COPY_SQL = f"COPY predictions ({', '.join(COLUMNS)}) FROM STDIN"


class PredictionLog(Protocol):
    enabled: bool

    def record(self, row: PredictionRow) -> None: ...

    async def fetch(self, request_id: str) -> list[dict[str, Any]]: ...

    async def fetch_one(self, prediction_id: uuid.UUID) -> dict[str, Any] | None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class NullLog:
    enabled = False

    def record(self, row: PredictionRow) -> None:
        return None

    async def fetch(self, request_id: str) -> list[dict[str, Any]]:
        return []

    async def fetch_one(self, prediction_id: uuid.UUID) -> dict[str, Any] | None:
        return None

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class PostgresLog:
    enabled = True

    def __init__(
        self,
        conninfo: str,
        *,
        spool_dir: Path,
        spool_max_bytes: int = MAX_BYTES,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.1,
        sync_interval_s: float = 0.1,
        replay_interval_s: float = 1.0,
        write_timeout_s: float = 2.0,
        prepare: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        # `prepare` runs before the first write and after every outage (schema upgrades).
        self._prepare = prepare
        self._pool = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=2,
            open=False,
            timeout=write_timeout_s,
            kwargs={"connect_timeout": max(1, int(write_timeout_s))},
        )
        self._queue: asyncio.Queue[PredictionRow] = asyncio.Queue(maxsize=queue_size)
        self._spool = Spool(spool_dir, max_bytes=spool_max_bytes)
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._sync_interval_s = sync_interval_s
        self._replay_interval_s = replay_interval_s
        self._write_timeout_s = write_timeout_s
        self._db_up = True
        self._tasks: list[asyncio.Task[None]] = []
        # Rows taken off the queue but not yet written: stop() still owes them a home.
        self._pending: list[PredictionRow] = []

    # The hot path -----------------------------------------------------------------------

    def record(self, row: PredictionRow) -> None:
        """Never blocks and never raises: a full queue spills to the spool."""
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self._to_spool([row])
        metrics.LOG_QUEUE_DEPTH.set(self._queue.qsize())

    # Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        # Do not wait for Postgres: a down database degrades the log, it must not stop serving.
        await self._pool.open(wait=False)
        self._db_up = await self._probe(quiet=True)
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="prediction-log-writer"),
            asyncio.create_task(self._sync_loop(), name="prediction-log-spool-sync"),
            asyncio.create_task(self._replay_loop(), name="prediction-log-replay"),
        ]

    async def stop(self) -> None:
        """Flush the queue to Postgres, or to the spool when Postgres does not take it."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        remaining, self._pending = self._pending, []
        while not self._queue.empty():
            remaining.append(self._queue.get_nowait())
        for start in range(0, len(remaining), self._batch_size):
            await self._write(remaining[start : start + self._batch_size])
        # Complete now: any worker may replay it, a later one in this same process too.
        self._spool.rotate()
        await self._pool.close()

    # Background work ---------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            try:
                await self._write_once()
            except Exception:
                logger.exception("prediction log: writer iteration failed")
                await asyncio.sleep(self._flush_interval_s)

    async def _write_once(self) -> None:
        self._pending = batch = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self._flush_interval_s
        while len(batch) < self._batch_size:
            timeout = deadline - asyncio.get_running_loop().time()
            if timeout <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout))
            except TimeoutError:
                break
        metrics.LOG_QUEUE_DEPTH.set(self._queue.qsize())
        await self._write(batch)
        self._pending = []

    async def _write(self, rows: list[PredictionRow]) -> None:
        if not self._db_up:
            self._to_spool(rows)
            return
        if await self._insert(rows):
            metrics.LOG_ROWS.labels("written").inc(len(rows))
        else:
            self._to_spool(rows)

    async def _insert(self, rows: list[PredictionRow], *, replay: bool = False) -> bool:
        """True once Postgres holds every row (rows it refuses go to the dead-letter file).

        New rows go in with COPY, several times cheaper per row than INSERT. A replay may
        carry rows already present, so it inserts with ON CONFLICT DO NOTHING; so does the
        fallback when a COPY hits a duplicate (a batch retried after a cancelled write).
        """
        try:
            if replay:
                await self._execute(rows)
            else:
                await self._copy(rows)
        except (psycopg.DataError, psycopg.IntegrityError):
            # One bad row must not pass for an outage, nor keep the good ones out.
            for row in rows:
                try:
                    await self._execute([row])
                except (psycopg.DataError, psycopg.IntegrityError) as e:
                    self._dead_letter(row, e)
                except (psycopg.Error, OSError, TimeoutError) as e:
                    return self._down(e)
            return True
        except (psycopg.Error, OSError, TimeoutError) as e:
            return self._down(e)
        return True

    async def _copy(self, rows: list[PredictionRow]) -> None:
        async with (
            asyncio.timeout(self._write_timeout_s),
            self._pool.connection() as conn,
            conn.cursor() as cursor,
            cursor.copy(COPY_SQL) as copy,
        ):
            for row in rows:
                await copy.write_row(row.values())

    async def _execute(self, rows: list[PredictionRow]) -> None:
        async with asyncio.timeout(self._write_timeout_s):
            async with self._pool.connection() as conn, conn.cursor() as cursor:
                await cursor.executemany(INSERT_SQL, [row.values() for row in rows])

    def _dead_letter(self, row: PredictionRow, error: Exception) -> None:
        logger.error("prediction log: Postgres refused row %s: %s", row.request_id, error)
        metrics.LOG_ROWS.labels("dead_letter").inc()
        try:
            with open_append(self._spool.directory / "dead-letter.jsonl.rejected") as f:
                f.write(row.to_json() + b"\n")
        except OSError as e:  # a symlink planted in its place, for one
            # The row stays in the log, less its payloads, which logs must not hold.
            kept = dataclasses.replace(row, input_payload=None, output_payload=None)
            logger.error(
                "prediction log: dead-letter file unwritable (%s); row: %s",
                e,
                kept.to_json().decode(),
            )

    def _down(self, e: Exception) -> bool:
        metrics.LOG_WRITE_ERRORS.inc()
        if self._db_up:
            logger.warning("prediction log: Postgres unavailable (%s); spooling rows", e)
        self._db_up = False
        return False

    def _to_spool(self, rows: list[PredictionRow]) -> None:
        try:
            self._spool.append([row.to_json() for row in rows])
        except OSError as e:
            # The disk refused too (full, read-only): say so loudly, never fail a request.
            logger.error("prediction log: %d rows lost, the spool refused them: %s", len(rows), e)
            metrics.LOG_ROWS.labels("lost").inc(len(rows))
            return
        metrics.LOG_ROWS.labels("spooled").inc(len(rows))

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._sync_interval_s)
            try:
                await asyncio.to_thread(self._spool.sync)
            except OSError:
                logger.exception("prediction log: spool fsync failed")

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self._replay_interval_s)
            try:
                await self._replay_once()
            except Exception:
                logger.exception("prediction log: replay iteration failed")

    async def _replay_once(self) -> None:
        metrics.LOG_SPOOL_BYTES.set(self._spool.pending_bytes())
        if not self._db_up and not await self._probe():
            return
        self._spool.rotate()
        with contextlib.closing(self._spool.claim()) as claimed:
            for path in claimed:
                if not await self._replay(path):
                    break
        metrics.LOG_SPOOL_BYTES.set(self._spool.pending_bytes())

    async def _probe(self, *, quiet: bool = False) -> bool:
        try:
            async with asyncio.timeout(self._write_timeout_s * 5):
                async with self._pool.connection() as conn:
                    await conn.execute("SELECT 1")
            if self._prepare is not None:
                # Its own, longer bound: a migration, or waiting for another worker's.
                async with asyncio.timeout(_PREPARE_TIMEOUT_S):
                    await self._prepare()
        except (psycopg.Error, OSError, TimeoutError) as e:
            if quiet:
                logger.warning("prediction log: Postgres unavailable at start (%s); spooling", e)
            return False
        if not quiet:
            logger.info("prediction log: Postgres is back; replaying the spool")
        self._db_up = True
        return True

    async def fetch(self, request_id: str) -> list[dict[str, Any]]:
        """Every row logged under a request id, oldest first."""
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT * FROM predictions WHERE request_id = %s ORDER BY created_at",
                (request_id,),
            )
            return await cursor.fetchall()

    async def fetch_one(self, prediction_id: uuid.UUID) -> dict[str, Any] | None:
        async with self._pool.connection() as conn, conn.cursor(row_factory=dict_row) as cursor:
            await cursor.execute(
                "SELECT * FROM predictions WHERE prediction_id = %s", (prediction_id,)
            )
            return await cursor.fetchone()

    async def _replay(self, path: Path) -> bool:
        replayed = 0
        for lines in iter_batches(path, self._batch_size):
            rows = []
            for line in lines:
                try:
                    rows.append(PredictionRow.from_json(line))
                except (ValueError, TypeError) as e:
                    logger.error("prediction log: unreadable spool line in %s: %s", path.name, e)
            if rows and not await self._insert(rows, replay=True):
                return False  # the file stays; it is claimed again on the next round
            replayed += len(rows)
        path.unlink()
        metrics.LOG_ROWS.labels("replayed").inc(replayed)
        return True
