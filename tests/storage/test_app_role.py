"""Finding 9: the api's Postgres role owned the database, so a compromised api could DROP the
prediction log, delete rows, or mint API keys. Where the deployment makes the `torchdock_app`
role (the compose stack does), the migrations grant it what the api does, and nothing more."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from service.keys.store import create_key, load_keys
from service.storage import migrate
from service.storage.prediction_log import PostgresLog
from tests.storage.test_spool import row

pytestmark = pytest.mark.integration

APP_GROUP = "torchdock_app"


@pytest.fixture
def app_url(database_url: str) -> Iterator[str]:
    """A login in the torchdock_app group; the test database is migrated by its owner."""
    login = f"torchdock_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        made_group = conn.execute("SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s)",
                                  (APP_GROUP,)).fetchone() == (True,)  # fmt: skip
        if made_group:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(APP_GROUP)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
            sql.Identifier(login), sql.Identifier(APP_GROUP)))  # fmt: skip
    asyncio.run(migrate.upgrade(database_url))
    yield psycopg.conninfo.make_conninfo(database_url, user=login)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(login)))
        if made_group:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(APP_GROUP)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(APP_GROUP)))


async def test_the_api_role_logs_rows_and_reads_keys(
    app_url: str, database_url: str, tmp_path: Path
) -> None:
    key, _ = create_key(database_url, name="client", models=None, rate_limit=None, expires_at=None)
    # The api at start: the schema is current, so its upgrade check needs no DDL.
    assert await migrate.upgrade(app_url) == []
    assert set(await load_keys(app_url, timeout_s=5)) == {key.key_id}
    log = PostgresLog(app_url, spool_dir=tmp_path, prepare=lambda: migrate.upgrade(app_url))
    await log.start()
    try:
        for i in range(3):
            log.record(row(f"r{i}"))
    finally:
        await log.stop()
    assert len(await log_rows(app_url)) == 3
    assert list(tmp_path.glob("*.jsonl")) == [], "every row must have reached Postgres"


async def log_rows(conninfo: str) -> list[tuple[str]]:
    async with await psycopg.AsyncConnection.connect(conninfo) as conn:
        cursor = await conn.execute("SELECT request_id FROM predictions")
        return await cursor.fetchall()


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE predictions",
        "TRUNCATE predictions",
        "DELETE FROM predictions",
        "UPDATE predictions SET status_code = 200",
        "ALTER TABLE predictions DROP COLUMN client_addr",
        "CREATE TABLE planted (a int)",
        "INSERT INTO api_keys (key_id, name, secret_sha256) VALUES ('k', 'minted', '\\x00')",
        "UPDATE api_keys SET revoked_at = NULL",
        "DELETE FROM schema_migrations",
    ],
)
def test_the_api_role_may_not(app_url: str, statement: str) -> None:
    with psycopg.connect(app_url) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute(statement)
