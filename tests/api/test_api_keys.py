"""API keys against real Postgres (the keys table) and Redis (the shared rate limits)."""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from service.config import Settings
from service.keys.store import create_key, revoke_key
from service.storage import migrate
from tests.conftest import SettingsFactory, serve
from tests.storage.test_prediction_log import wait_for_rows

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/digits:predict"
BODY = {"instances": [[[0.0] * 8] * 8]}


@pytest.fixture
async def keyed(
    make_settings: SettingsFactory, database_url: str, redis_url: str, tmp_path: Path
) -> SettingsFactory:
    """A factory of settings with API_KEYS=required (the keys table made first)."""
    await migrate.upgrade(database_url)

    def settings(**overrides: Any) -> Settings:
        values = {
            "api_keys": "required",
            "database_url": database_url,
            "redis_url": redis_url,
            "spool_dir": tmp_path / "spool",
            "api_keys_refresh_s": 0.1,
        }
        return make_settings(**{**values, **overrides})

    return settings


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_prediction_needs_a_usable_key(
    keyed: SettingsFactory, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    _, key = create_key(database_url, name="app", models=None, rate_limit=None, expires_at=None)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    _, expired = create_key(database_url, name="old", models=None, rate_limit=None,
                            expires_at=past)  # fmt: skip
    async with serve(keyed(log_level="DEBUG", log_format="json")) as http:
        missing = await http.post(PREDICT, json=BODY)
        assert missing.status_code == 401
        assert missing.headers["content-type"] == "application/problem+json"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.json()["type"].endswith(":api-key-required")
        assert missing.json()["request_id"]
        for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "tdk_nonsense", expired):
            r = await http.post(PREDICT, json=BODY, headers=bearer(wrong))
            assert r.status_code == 401, wrong
            assert r.json()["type"].endswith(":invalid-api-key")
        assert (await http.post(PREDICT, json=BODY, headers=bearer(key))).status_code == 200
        assert (await http.post(PREDICT, json=BODY, headers={"X-API-Key": key})).status_code == 200
        # Probes and the server's own metadata stay open; the models' metadata does not.
        assert (await http.get("/v2/health/ready")).status_code == 200
        assert (await http.get("/v2")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 401
        assert (await http.get("/v2/models/digits", headers=bearer(key))).status_code == 200
    logged = "".join(capfd.readouterr())
    assert PREDICT in logged  # the request log lines were captured
    assert key.split("_", 2)[2] not in logged


async def test_a_key_may_be_kept_to_some_models(keyed: SettingsFactory, database_url: str) -> None:
    _, key = create_key(database_url, name="m", models=["minilm"], rate_limit=None, expires_at=None)
    async with serve(keyed()) as http:
        r = await http.post(PREDICT, json=BODY, headers=bearer(key))
        assert r.status_code == 403
        assert r.json()["type"].endswith(":model-not-allowed")
        v2 = {"inputs": [{"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32",
                          "data": [0.0] * 64}]}  # fmt: skip
        assert (
            await http.post("/v2/models/digits/infer", json=v2, headers=bearer(key))
        ).status_code == 403


async def test_a_revoked_key_stops_working_without_a_restart(
    keyed: SettingsFactory, database_url: str
) -> None:
    _, key = create_key(database_url, name="gone", models=None, rate_limit=None, expires_at=None)
    async with serve(keyed()) as http:
        assert (await http.post(PREDICT, json=BODY, headers=bearer(key))).status_code == 200
        assert revoke_key(database_url, "gone") is not None
        for _ in range(100):
            r = await http.post(PREDICT, json=BODY, headers=bearer(key))
            if r.status_code == 401:
                break
            await asyncio.sleep(0.05)
        assert r.status_code == 401


async def test_the_key_id_is_in_the_prediction_log(
    keyed: SettingsFactory, database_url: str
) -> None:
    stored, key = create_key(database_url, name="logged", models=None, rate_limit=None,
                             expires_at=None)  # fmt: skip
    async with serve(keyed()) as http:
        assert (await http.post(PREDICT, json=BODY, headers=bearer(key))).status_code == 200
    assert await wait_for_rows(database_url, 1) == 1
    with psycopg.connect(database_url) as conn:
        (row,) = conn.execute("SELECT api_key_id FROM predictions").fetchall()
    assert row == (stored.key_id,)


async def test_a_rate_limit_holds_across_replicas(
    keyed: SettingsFactory, database_url: str
) -> None:
    _, key = create_key(database_url, name="rl", models=None, rate_limit="6/minute",
                        expires_at=None)  # fmt: skip
    # Two apps, as two replicas would be: one Redis counts for both.
    async with serve(keyed(replica_id="a")) as first, serve(keyed(replica_id="b")) as second:
        statuses = []
        for i in range(10):
            http = first if i % 2 else second
            statuses.append((await http.post(PREDICT, json=BODY, headers=bearer(key))).status_code)
        limited = await first.post(PREDICT, json=BODY, headers=bearer(key))
    assert statuses == [200] * 6 + [429] * 4
    assert limited.json()["type"].endswith(":rate-limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 60


@pytest.mark.parametrize(("failure", "status"), [("open", 200), ("closed", 503)])
async def test_without_redis_the_limit_fails_as_configured(
    keyed: SettingsFactory, database_url: str, failure: str, status: int
) -> None:
    _, key = create_key(database_url, name="f", models=None, rate_limit="1/minute", expires_at=None)
    settings = keyed(redis_url="redis://127.0.0.1:1/0", rate_limit_failure=failure)
    async with serve(settings) as http:
        for _ in range(3):
            r = await http.post(PREDICT, json=BODY, headers=bearer(key))
            assert r.status_code == status, r.text


def test_the_keys_command_creates_lists_and_revokes(database_url: str) -> None:
    torchdock = str(Path(sys.executable).parent / "torchdock")
    env = {"DATABASE_URL": database_url, "PATH": ""}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([torchdock, "keys", *args], env=env, capture_output=True, text=True)
        assert (done.returncode == 0) == ok, done.stderr
        return done

    created = run("create", "--name", "scorer", "--models", "digits", "--rate-limit", "5/second",
                  "--expires-in", "30d")  # fmt: skip
    key = created.stdout.strip()
    assert key.startswith("tdk_") and len(created.stdout.splitlines()) == 1
    assert "not shown again" in created.stderr
    listing = run("list").stdout
    assert "scorer" in listing and "digits" in listing and "active" in listing
    assert key.split("_", 2)[2] not in listing  # the secret is nowhere but in that one answer
    with psycopg.connect(database_url) as conn:
        (stored,) = conn.execute("SELECT secret_sha256 FROM api_keys").fetchone() or (None,)
    assert key.encode() not in bytes(stored)
    assert "exists already" in run("create", "--name", "scorer", ok=False).stderr
    assert "--rate-limit" in run("create", "--name", "x", "--rate-limit", "lots", ok=False).stderr
    run("revoke", "scorer")
    assert "revoked" in run("list").stdout
    assert "no usable key" in run("revoke", "scorer", ok=False).stderr
