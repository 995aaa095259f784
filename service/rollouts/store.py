"""The `routing_policies` table: each model's policy with a revision, and its history.

A write names the revision it read (`expected`): two operators, or an operator and the guard,
cannot overwrite each other's change unseen; the second gets `StaleRevision`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from service.rollouts.policy import RoutingPolicy


class StaleRevision(Exception):
    """The policy changed since it was read."""


@dataclass(frozen=True)
class StoredPolicy:
    model: str
    policy: RoutingPolicy
    revision: int
    updated_at: dt.datetime


@asynccontextmanager
async def _connect(conninfo: str, timeout_s: float) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    # The SET is inside the `async with`: a refresher cancelled while it runs must still close
    # the connection, not leave it open for the garbage collector.
    async with await psycopg.AsyncConnection.connect(
        conninfo, connect_timeout=max(1, int(timeout_s))
    ) as conn:
        await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        yield conn


async def load_policies(conninfo: str, *, timeout_s: float = 2.0) -> dict[str, StoredPolicy]:
    async with (
        _connect(conninfo, timeout_s) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(
            "SELECT model_name, policy, revision, updated_at FROM routing_policies"
        )
        return {
            row["model_name"]: StoredPolicy(
                row["model_name"],
                RoutingPolicy.model_validate(row["policy"]),
                row["revision"],
                row["updated_at"],
            )
            for row in await cursor.fetchall()
        }


async def save_policy(
    conninfo: str,
    model: str,
    policy: RoutingPolicy,
    *,
    action: str,
    reason: str | None = None,
    expected: int | None = None,
    timeout_s: float = 5.0,
) -> StoredPolicy:
    """Store `policy` as the model's next revision. `expected`: the revision it replaces (0:
    none yet); another one is a `StaleRevision`. None: whatever is there."""
    body = Jsonb(policy.model_dump(mode="json", exclude_none=True))
    async with _connect(conninfo, timeout_s) as conn, conn.transaction():
        cursor = await conn.execute(
            "SELECT revision FROM routing_policies WHERE model_name = %s FOR UPDATE", (model,)
        )
        row = await cursor.fetchone()
        current = row[0] if row else 0
        if expected is not None and expected != current:
            raise StaleRevision(
                f"the routing policy of {model!r} is at revision {current}, not {expected}"
            )
        cursor = await conn.execute(
            "INSERT INTO routing_policies (model_name, policy, revision) VALUES (%s, %s, %s)"
            " ON CONFLICT (model_name) DO UPDATE SET policy = EXCLUDED.policy,"
            " revision = EXCLUDED.revision, updated_at = now() RETURNING updated_at",
            (model, body, current + 1),
        )
        saved = await cursor.fetchone()
        assert saved is not None
        await conn.execute(
            "INSERT INTO routing_events (model_name, revision, policy, action, reason)"
            " VALUES (%s, %s, %s, %s, %s)",
            (model, current + 1, body, action, reason),
        )
    return StoredPolicy(model, policy, current + 1, saved[0])


async def load_events(
    conninfo: str, model: str, *, since: dt.datetime, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    async with (
        _connect(conninfo, timeout_s) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(
            "SELECT revision, policy, action, reason, created_at FROM routing_events"
            " WHERE model_name = %s AND created_at >= %s ORDER BY revision",
            (model, since),
        )
        return list(await cursor.fetchall())
