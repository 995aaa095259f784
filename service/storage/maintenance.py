"""Operator queries on the prediction log: retention and summaries."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import psycopg
from psycopg.rows import dict_row

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> dt.timedelta:
    """`30d`, `12h`, `15m`, `90s`."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
    return dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


async def prune(conninfo: str, *, older_than: dt.timedelta, batch: int = 10_000) -> int:
    """Delete rows older than `older_than`, in batches so that locks stay short."""
    cutoff = dt.datetime.now(dt.UTC) - older_than
    removed = 0
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(
                "DELETE FROM predictions WHERE ctid = ANY(ARRAY("
                " SELECT ctid FROM predictions WHERE created_at < %s LIMIT %s))",
                (cutoff, batch),
            )
            removed += cursor.rowcount
            if cursor.rowcount < batch:
                return removed


async def stats(conninfo: str, *, since: dt.timedelta) -> list[dict[str, Any]]:
    """Counts per model, version and status over the window."""
    cutoff = dt.datetime.now(dt.UTC) - since
    async with (
        await psycopg.AsyncConnection.connect(conninfo) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(
            "SELECT model_name, model_version, status_code, count(*) AS requests,"
            " round(avg(total_ms)::numeric, 2) AS mean_total_ms,"
            " sum(CASE WHEN cache_result = 'hit' THEN 1 ELSE 0 END) AS cache_hits"
            " FROM predictions WHERE created_at >= %s"
            " GROUP BY model_name, model_version, status_code"
            " ORDER BY model_name, model_version, status_code",
            (cutoff,),
        )
        return await cursor.fetchall()
