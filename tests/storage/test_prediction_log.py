"""The Postgres prediction log with a real Postgres: rows, outages, spool replay, migrations."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from service.storage import migrate
from tests.conftest import SettingsFactory, serve
from tests.digits_data import ZEROS
from tests.faults import TcpProxy

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/digits:predict"


def rows(database_url: str, sql: str = "SELECT * FROM predictions") -> list[dict[str, object]]:
    with psycopg.connect(database_url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(sql).fetchall()


def proxied(database_url: str, proxy: TcpProxy) -> str:
    return psycopg.conninfo.make_conninfo(database_url, host="127.0.0.1", port=proxy.port)


def target_of(database_url: str) -> tuple[str, int]:
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return str(info.get("host", "127.0.0.1")), int(info.get("port", 5432))


async def wait_for_rows(database_url: str, expected: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = len(rows(database_url, "SELECT request_id FROM predictions"))
        if count >= expected:
            return count
        await asyncio.sleep(0.2)
    return count


async def test_rows_have_the_right_fields(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path, redis_url: str
) -> None:
    settings = make_settings(
        database_url=database_url,
        redis_url=redis_url,
        spool_dir=tmp_path / "spool",
        log_payloads=True,
        log_payload_max_bytes=64,
    )
    async with serve(settings) as http:
        two = {"instances": [ZEROS, [[1.0] * 8] * 8]}
        ok = await http.post(PREDICT, json=two, headers={"X-Request-ID": "row-ok"})
        again = await http.post(PREDICT, json=two, headers={"X-Request-ID": "row-hit"})
        bad = await http.post(
            PREDICT, json={"instances": [[1, 2]]}, headers={"X-Request-ID": "row-bad"}
        )
        missing = await http.post(
            "/v1/models/nope:predict",
            json={"instances": [ZEROS]},
            headers={"X-Request-ID": "row-404"},
        )
        assert [ok.status_code, again.status_code, bad.status_code, missing.status_code] == [
            200, 200, 422, 404,
        ]  # fmt: skip
        assert await wait_for_rows(database_url, 4) == 4
    by_id = {r["request_id"]: r for r in rows(database_url)}
    row = by_id["row-ok"]
    assert (row["model_name"], row["model_version"], row["status_code"]) == ("digits", 1, 200)
    assert row["cache_result"] == "miss"
    assert row["instances"] == 2
    assert row["batch_size"] == 2
    assert row["client_addr"] == "127.0.0.1"
    assert row["replica_id"] == "test-replica"
    assert 0 <= row["queue_ms"] <= row["total_ms"]
    assert 0 < row["inference_ms"] <= row["total_ms"]
    assert len(row["input_digest"]) == 32 and len(row["output_digest"]) == 32
    assert row["payload_cap_bytes"] == 64
    assert bytes(row["input_payload"]) == ok.request.content[:64]
    assert bytes(row["output_payload"]) == ok.content[:64]
    hit = by_id["row-hit"]
    assert hit["cache_result"] == "hit"
    assert hit["batch_size"] is None
    assert hit["input_digest"] == row["input_digest"]
    assert hit["output_digest"] == row["output_digest"]
    assert (by_id["row-bad"]["status_code"], by_id["row-bad"]["error_type"]) == (
        422,
        "invalid-input",
    )
    assert by_id["row-404"]["error_type"] == "model-not-found"
    assert by_id["row-404"]["model_version"] == 0


async def test_outage_of_1000_requests_loses_no_row(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(*target_of(database_url))
    settings = make_settings(
        database_url=proxied(database_url, proxy), spool_dir=tmp_path / "spool"
    )
    try:
        async with serve(settings) as http:
            await http.post(PREDICT, json={"instances": [ZEROS]}, headers={"X-Request-ID": "pre"})
            assert await wait_for_rows(database_url, 1) == 1
            proxy.down()
            statuses = []
            for start in range(0, 1000, 50):
                batch = await asyncio.gather(
                    *(
                        http.post(
                            PREDICT,
                            json={"instances": [ZEROS]},
                            headers={"X-Request-ID": f"outage-{i}"},
                        )
                        for i in range(start, start + 50)
                    )
                )
                statuses += [r.status_code for r in batch]
            assert statuses == [200] * 1000  # predictions kept being served
            assert list((tmp_path / "spool").glob("*.jsonl")), "rows must be on the spool"
            proxy.up()
            assert await wait_for_rows(database_url, 1001, timeout=60) == 1001
    finally:
        proxy.close()
    ids = [r["request_id"] for r in rows(database_url, "SELECT request_id FROM predictions")]
    assert len(ids) == len(set(ids)) == 1001
    assert {f"outage-{i}" for i in range(1000)} <= set(ids)
    assert list((tmp_path / "spool").glob("*.jsonl")) == []


async def test_graceful_shutdown_flushes_to_the_spool(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path
) -> None:
    proxy = TcpProxy(*target_of(database_url))
    spool = tmp_path / "spool"
    settings = make_settings(database_url=proxied(database_url, proxy), spool_dir=spool)
    try:
        proxy.down()
        async with serve(settings) as http:
            for i in range(20):
                await http.post(
                    PREDICT, json={"instances": [ZEROS]}, headers={"X-Request-ID": f"s-{i}"}
                )
        lines = [
            json.loads(line) for p in spool.glob("*.jsonl") for line in p.read_text().splitlines()
        ]
        assert sorted(row["request_id"] for row in lines) == sorted(f"s-{i}" for i in range(20))
        # A later worker replays what the stopped one left behind.
        proxy.up()
        async with serve(settings):
            assert await wait_for_rows(database_url, 20) == 20
    finally:
        proxy.close()


def test_migrations_upgrade_empty_and_previous(database_url: str) -> None:
    latest = len(migrate.available())
    assert latest >= 2
    assert asyncio.run(migrate.upgrade(database_url, target=latest - 1)) == list(range(1, latest))
    assert asyncio.run(migrate.current_version(database_url)) == latest - 1
    assert asyncio.run(migrate.upgrade(database_url)) == [latest]
    assert asyncio.run(migrate.upgrade(database_url)) == []  # idempotent
    columns = {
        r["column_name"]
        for r in rows(
            database_url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'predictions'",
        )
    }
    assert {"request_id", "created_at", "replica_id", "error_type", "prediction_id"} <= columns


def test_db_commands(database_url: str) -> None:
    torchdock = str(Path(sys.executable).parent / "torchdock")
    env = {"DATABASE_URL": database_url, "PATH": ""}

    def run(*args: str) -> str:
        return subprocess.run(
            [torchdock, *args], env=env, capture_output=True, text=True, check=True
        ).stdout

    assert f"schema at version {len(migrate.available())}" in run("db", "upgrade")
    with psycopg.connect(database_url) as conn:
        for i, age in enumerate(("40 days", "1 hour", "2 hours")):
            conn.execute(
                "INSERT INTO predictions (request_id, created_at, model_name, model_version,"
                " status_code, cache_result, instances, total_ms, payload_cap_bytes)"
                f" VALUES (%s, now() - interval '{age}', 'digits', 1, 200, 'miss', 1, 1.0, 0)",
                (f"r{i}",),
            )
    stats = run("db", "stats", "--since", "7d")
    assert "digits" in stats and " 2 " in stats
    assert "deleted 1 rows" in run("db", "prune", "--older-than", "30d")
    assert len(rows(database_url)) == 2


async def test_prediction_lookup(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path
) -> None:
    base = {"database_url": database_url, "spool_dir": tmp_path / "spool"}
    async with serve(make_settings(**base)) as http:
        sent = await http.post(
            PREDICT, json={"instances": [ZEROS]}, headers={"X-Request-ID": "look"}
        )
        prediction_id = sent.headers["x-prediction-id"]
        by_id = f"/v1/predictions/{prediction_id}"
        assert (await http.get(by_id)).status_code == 404  # off by default
    token = "s3cret-token-s3cret-token-s3cret-token"
    settings = make_settings(**base, prediction_lookup=True, admin_token=token)
    async with serve(settings) as http:
        assert await wait_for_rows(database_url, 1) == 1
        assert (await http.get(by_id)).status_code == 401
        wrong = await http.get(by_id, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": f"Bearer {token}"}
        found = await http.get(by_id, headers=auth)
        assert found.status_code == 200
        assert found.json()["row"]["model_name"] == "digits"
        assert found.json()["row"]["request_id"] == "look"
        listed = await http.get("/v1/predictions", params={"request_id": "look"}, headers=auth)
        assert [r["prediction_id"] for r in listed.json()["rows"]] == [prediction_id]
        absent = "00000000-0000-4000-8000-000000000000"
        assert (await http.get(f"/v1/predictions/{absent}", headers=auth)).status_code == 404
        assert (await http.get("/v1/predictions/look", headers=auth)).status_code == 422
        missing = await http.get("/v1/predictions", params={"request_id": "none"}, headers=auth)
        assert missing.status_code == 404


async def test_hostile_urls_still_give_valid_rows(
    make_settings: SettingsFactory, database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url=database_url, spool_dir=tmp_path / "spool")
    async with serve(settings) as http:
        huge = await http.post(
            "/v1/models/digits/versions/99999999999:predict",
            json={"instances": [ZEROS]},
            headers={"X-Request-ID": "huge-version"},
        )
        nul = await http.post(
            "/v1/models/dig%00its:predict",
            json={"instances": [ZEROS]},
            headers={"X-Request-ID": "nul-name"},
        )
        good = await http.post(PREDICT, json={"instances": [ZEROS]}, headers={"X-Request-ID": "ok"})
        assert [huge.status_code, nul.status_code, good.status_code] == [404, 404, 200]
        assert await wait_for_rows(database_url, 3) == 3
    by_id = {r["request_id"]: r for r in rows(database_url)}
    assert by_id["huge-version"]["model_version"] == 0
    assert by_id["nul-name"]["model_name"] == "digits"
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # no batch mistaken for an outage


def test_an_install_without_migration_files_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="no migrations"):
        migrate.available()


def test_the_previous_release_still_inserts_after_the_upgrade(database_url: str) -> None:
    # During a rolling upgrade, old replicas insert with their own ON CONFLICT target.
    asyncio.run(migrate.upgrade(database_url))
    old_insert = (
        "INSERT INTO predictions (request_id, created_at, model_name, model_version,"
        " status_code, cache_result, instances, total_ms, payload_cap_bytes)"
        " VALUES ('old', '2026-01-01T00:00:00Z', 'digits', 1, 200, 'miss', 1, 1.0, 0)"
        " ON CONFLICT (request_id, created_at) DO NOTHING"
    )
    with psycopg.connect(database_url) as conn:
        conn.execute(old_insert)
        conn.execute(old_insert)  # a replay: still one row
    (row,) = rows(database_url)
    assert row["request_id"] == "old" and row["prediction_id"] is not None
