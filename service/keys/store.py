"""The `api_keys` table: what `torchdock keys` writes and every replica reads."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row

from service.keys.keys import ApiKey, new_key

_COLUMNS = "key_id, name, secret_sha256, models, rate_limit, expires_at, created_at, revoked_at"


class KeyExists(Exception):
    pass


def _key(row: dict[str, Any]) -> ApiKey:
    models = row["models"]
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        secret_sha256=bytes(row["secret_sha256"]),
        models=tuple(models) if models is not None else None,
        rate_limit=row["rate_limit"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )


async def load_keys(conninfo: str, *, timeout_s: float) -> dict[str, ApiKey]:
    """Every key, revoked and expired ones too (so that they answer 401, not 'unknown')."""
    async with (
        await psycopg.AsyncConnection.connect(
            conninfo, connect_timeout=max(1, int(timeout_s))
        ) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
        await cursor.execute(f"SELECT {_COLUMNS} FROM api_keys")
        return {row["key_id"]: _key(row) for row in await cursor.fetchall()}


def create_key(
    conninfo: str,
    *,
    name: str,
    models: Sequence[str] | None,
    rate_limit: str | None,
    expires_at: dt.datetime | None,
) -> tuple[ApiKey, str]:
    """A new key, stored by its digest; returns it with the key itself, which exists only here."""
    key_id, key, secret_sha256 = new_key()
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cursor:
        try:
            cursor.execute(
                "INSERT INTO api_keys (key_id, name, secret_sha256, models, rate_limit,"
                f" expires_at) VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (key_id, name, secret_sha256, list(models) if models else None, rate_limit,
                 expires_at),
            )  # fmt: skip
        except psycopg.errors.UniqueViolation:
            raise KeyExists(f"a key named {name!r} exists already") from None
        row = cursor.fetchone()
    assert row is not None
    return _key(row), key


def list_keys(conninfo: str) -> list[ApiKey]:
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY created_at")
        return [_key(row) for row in cursor.fetchall()]


def revoke_key(conninfo: str, name_or_id: str) -> ApiKey | None:
    """Revoke by name or key id; None when there is no such key (or it was revoked before)."""
    with psycopg.connect(conninfo) as conn, conn.cursor(row_factory=dict_row) as cursor:
        cursor.execute(
            "UPDATE api_keys SET revoked_at = now()"
            " WHERE (name = %s OR key_id = %s) AND revoked_at IS NULL"
            f" RETURNING {_COLUMNS}",
            (name_or_id, name_or_id),
        )
        row = cursor.fetchone()
    return _key(row) if row else None
