"""The stored policies in real Postgres: revisions, refused stale writes, history, and every
worker's table following them."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from service.config import Settings
from service.rollouts.policy import RoutingPolicy
from service.rollouts.store import (
    StaleRevision,
    StoredPolicy,
    load_events,
    load_policies,
    save_policy,
)
from service.rollouts.table import RolloutsUnavailable, RoutingTable
from service.storage import migrate

pytestmark = pytest.mark.integration

CANARY = RoutingPolicy.model_validate({"default": 1, "canary": {"version": 2, "percent": 10}})


async def test_revisions_history_and_stale_writes(database_url: str) -> None:
    await migrate.upgrade(database_url)
    first = await save_policy(database_url, "digits", CANARY, action="set", expected=0)
    assert first.revision == 1
    second = await save_policy(
        database_url, "digits", RoutingPolicy(default=1), action="abort", reason="by hand",
        expected=1,
    )  # fmt: skip
    assert second.revision == 2
    with pytest.raises(StaleRevision, match="at revision 2, not 1"):
        await save_policy(database_url, "digits", CANARY, action="set", expected=1)
    stored = await load_policies(database_url)
    assert stored["digits"].policy == RoutingPolicy(default=1)
    assert stored["digits"].revision == 2
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    events = await load_events(database_url, "digits", since=since)
    assert [(e["revision"], e["action"], e["reason"]) for e in events] == [
        (1, "set", None),
        (2, "abort", "by hand"),
    ]


async def test_workers_follow_the_store_over_their_settings(database_url: str) -> None:
    await migrate.upgrade(database_url)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, model_settings={"digits": {"routing": CANARY.model_dump()}}
    )
    one, other = RoutingTable(settings, database_url), RoutingTable(settings, database_url)
    await one.start()
    await other.start()
    try:
        assert one.policy_for("digits") == CANARY and one.revision("digits") == 0
        await one.save("digits", RoutingPolicy(default=1), action="abort", expected=0)
        assert one.policy_for("digits") == RoutingPolicy(default=1)
        assert other.policy_for("digits") == CANARY  # until it reads the store again
        assert await other.refresh()
        assert other.policy_for("digits") == RoutingPolicy(default=1)
        assert other.revision("digits") == 1
    finally:
        await one.stop()
        await other.stop()


async def test_a_read_older_than_this_workers_own_save_does_not_undo_it(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await migrate.upgrade(database_url)
    table = RoutingTable(Settings(_env_file=None), database_url)  # type: ignore[call-arg]
    assert await table.refresh()
    before_save = await load_policies(database_url)
    await table.save("digits", CANARY, action="set", expected=0)

    async def read_started_before_the_save(conninfo: str) -> dict[str, StoredPolicy]:
        return before_save | {"other": StoredPolicy("other", CANARY, 4, dt.datetime.now(dt.UTC))}

    monkeypatch.setattr("service.rollouts.table.load_policies", read_started_before_the_save)
    read_from = time.time()
    assert await table.refresh()
    assert table.revision("digits") == 1 and table.policy_for("digits") == CANARY
    assert table.revision("other") == 4
    assert REGISTRY.get_sample_value("torchdock_routing_policies_read_timestamp_seconds") >= (
        read_from
    )


async def test_a_read_cancelled_while_it_sets_its_timeout_closes_its_connection(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresher stopped at shutdown is cancelled wherever it waits; an open connection left
    behind is found only later, by the garbage collector (CI saw its ResourceWarning)."""
    opened: list[psycopg.AsyncConnection[Any]] = []
    setting = asyncio.Event()
    execute = psycopg.AsyncConnection.execute

    async def hang_on_the_timeout(conn: psycopg.AsyncConnection[Any], query: Any, *a: Any) -> Any:
        if str(query).startswith("SET statement_timeout"):
            opened.append(conn)
            setting.set()
            await asyncio.Event().wait()
        return await execute(conn, query, *a)

    monkeypatch.setattr(psycopg.AsyncConnection, "execute", hang_on_the_timeout)
    read = asyncio.create_task(load_policies(database_url))
    await asyncio.wait_for(setting.wait(), 10)
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    assert len(opened) == 1 and opened[0].closed


async def test_without_a_database_a_policy_cannot_be_shared() -> None:
    table = RoutingTable(Settings(_env_file=None), None)  # type: ignore[call-arg]
    with pytest.raises(RolloutsUnavailable):
        await table.save("digits", CANARY, action="set")
    assert table.policy_for("digits") is None


def test_the_rollout_command(database_url: str) -> None:
    def rollout(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).parent / "torchdock"), "rollout", *args],
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=120,
        )

    canary = '{"default": 1, "canary": {"version": 2, "percent": 10}}'
    assert rollout("set", "--model", "digits", "--policy", canary).returncode == 0
    shown = rollout("show")
    assert shown.stdout.startswith("digits: revision 1, ")
    assert '"percent": 10.0' in shown.stdout
    promoted = rollout("promote", "--model", "digits", "--reason", "healthy")
    assert promoted.returncode == 0 and '{"default": 2}' in promoted.stdout
    again = rollout("abort", "--model", "digits")
    assert again.returncode == 2 and "no canary to abort" in again.stderr
    bad = rollout("set", "--model", "digits", "--policy", '{"canary": {"version": 2}}')
    assert bad.returncode == 2 and "percent" in bad.stderr
    report = rollout("report", "--model", "digits", "--since", "5m")
    assert report.returncode == 0
    assert "revision 2 promote" in report.stdout and "(healthy)" in report.stdout
