"""Canary and shadow routing through the API, with the policy in real Postgres: shares, sticky
keys, shadow rows with their agreement, promote and abort, and the report from the log."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg.rows import dict_row

from service.rollouts.report import build_report, render_text
from tests.conftest import SettingsFactory, serve
from tests.rollouts.versions import OtherClassifier, copy_version, package_classifier

pytestmark = pytest.mark.integration

TOKEN = "a-rollout-admin-token-long-enough-32"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ROUTING = "/v2/repository/models/digits/routing"
PREDICT = "/v1/models/digits:predict"


@pytest.fixture
def repo(repo_copy: Path) -> Path:
    copy_version(repo_copy, 1, 2)  # the same model: it agrees with version 1 everywhere
    package_classifier(repo_copy, 3, OtherClassifier(seed=3))  # random weights: it does not
    return repo_copy


def images(count: int, seed: int = 0) -> list[list[list[float]]]:
    rng = np.random.default_rng(seed)
    return (rng.random((count, 8, 8)) * 16).round(2).tolist()  # type: ignore[no-any-return]


def shadow_rows(database_url: str) -> list[dict[str, object]]:
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT model_version, compared_version, agreement, agreement_kind, status_code"
            " FROM predictions WHERE role = 'shadow'"
        ).fetchall()


async def until(check: object, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_canary_share_sticky_keys_and_promotion(
    make_settings: SettingsFactory, repo: Path, database_url: str
) -> None:
    settings = make_settings(model_repository=repo, database_url=database_url, admin_token=TOKEN)
    async with serve(settings) as client:
        policy = {"default": 1, "canary": {"version": 2, "percent": 20}}
        put = await client.put(ROUTING, json={"policy": policy, "revision": 0}, headers=ADMIN)
        assert put.status_code == 200, put.text
        assert put.json()["revision"] == 1 and put.json()["source"] == "stored"

        body = {"instances": images(1)}
        served: Counter[tuple[str, str]] = Counter()
        for i in range(400):
            r = await client.post(PREDICT, json=body, headers={"X-Routing-Key": f"user-{i}"})
            assert r.status_code == 200
            served[(r.headers["X-Model-Version"], r.headers["X-Routing-Role"])] += 1
        assert set(served) == {("1", "primary"), ("2", "canary")}
        assert 0.15 < served[("2", "canary")] / 400 < 0.25, served
        # One key, one version, every time; a version named by the client is not routed.
        again = {
            (await client.post(PREDICT, json=body, headers={"X-Routing-Key": "user-7"})).headers[
                "X-Model-Version"
            ]
            for _ in range(10)
        }
        assert len(again) == 1
        named = await client.post("/v1/models/digits/versions/1:predict", json=body)
        assert "X-Routing-Role" not in named.headers

        stale = await client.put(ROUTING, json={"policy": policy, "revision": 0}, headers=ADMIN)
        assert stale.status_code == 409 and stale.json()["type"].endswith("stale-revision")
        unknown = await client.put(
            ROUTING, json={"policy": {"canary": {"version": 9, "percent": 5}}}, headers=ADMIN
        )
        assert unknown.status_code == 409 and "no version 9" in unknown.json()["detail"]
        refused = await client.put(ROUTING, json={"policy": policy})
        assert refused.status_code == 401

        promote = await client.post(f"{ROUTING}/promote", json={"reason": "healthy"}, headers=ADMIN)
        assert promote.json()["policy"] == {"default": 2} and promote.json()["revision"] == 2
        versions = {
            (await client.post(PREDICT, json=body, headers={"X-Routing-Key": f"u{i}"})).headers[
                "X-Model-Version"
            ]
            for i in range(30)
        }
        assert versions == {"2"}
        again_abort = await client.post(f"{ROUTING}/abort", headers=ADMIN)
        assert again_abort.status_code == 409 and again_abort.json()["type"].endswith("no-canary")

    with psycopg.connect(database_url) as conn:
        roles = dict(
            conn.execute("SELECT role, count(*) FROM predictions GROUP BY role").fetchall()
        )
        events = conn.execute(
            "SELECT action, reason FROM routing_events ORDER BY revision"
        ).fetchall()
    assert roles["canary"] == served[("2", "canary")]
    assert events == [("set", None), ("promote", "healthy")]


async def test_shadows_are_compared_off_the_request_path(
    make_settings: SettingsFactory, repo: Path, database_url: str
) -> None:
    # Every shadow computed (no CPU share to keep): this test is about what they record.
    settings = make_settings(
        model_repository=repo, database_url=database_url, admin_token=TOKEN, shadow_max_busy=1
    )
    async with serve(settings) as client:
        for shadow, count in ((2, 20), (3, 20)):
            policy = {"default": 1, "shadow": {"version": shadow}}
            r = await client.put(ROUTING, json={"policy": policy}, headers=ADMIN)
            assert r.status_code == 200, r.text
            # Loaded into the shadow process when the policy names it, before any request.
            await until(lambda s=shadow: REGISTRY.get_sample_value(
                "torchdock_shadow_ready", {"model_name": "digits", "model_version": str(s)}
            ) == 1)  # fmt: skip
            for i in range(count):
                answer = await client.post(PREDICT, json={"instances": images(4, seed=i)})
                assert answer.headers["X-Model-Version"] == "1"
                assert answer.headers["X-Routing-Role"] == "primary"
            await until(lambda s=shadow, n=count: sum(
                row["model_version"] == s for row in shadow_rows(database_url)) == n
            )  # fmt: skip
    rows = shadow_rows(database_url)
    same = [row for row in rows if row["model_version"] == 2]
    other = [row for row in rows if row["model_version"] == 3]
    assert {(r["compared_version"], r["agreement_kind"], r["status_code"]) for r in rows} == {
        (1, "top1", 200)
    }
    assert all(row["agreement"] == 1.0 for row in same)
    assert np.mean([row["agreement"] for row in other]) < 0.5  # random weights vs a real model

    report = await build_report(database_url, "digits", since=dt.timedelta(minutes=10))
    by_version = {a.version: a for a in report.agreement}
    assert by_version[2].mean == 1.0 and by_version[3].mean < 0.5
    (primary,) = [v for v in report.versions if v.role == "primary"]
    assert primary.version == 1 and primary.requests == 40 and primary.errors == 0
    text = render_text(report)
    assert "version 3 against 1: top1 mean" in text
    assert report.as_json()["agreement"][0]["kind"] == "top1"


async def test_without_a_database_the_policy_comes_from_settings_only(
    make_settings: SettingsFactory, repo: Path
) -> None:
    routing = {"default": 1, "canary": {"version": 3, "percent": 100}}
    settings = make_settings(
        model_repository=repo, admin_token=TOKEN, model_settings={"digits": {"routing": routing}}
    )
    async with serve(settings) as client:
        r = await client.post(PREDICT, json={"instances": images(1)})
        assert (r.headers["X-Model-Version"], r.headers["X-Routing-Role"]) == ("3", "canary")
        view = await client.get(ROUTING, headers=ADMIN)
        assert view.json()["source"] == "settings"
        change = await client.post(f"{ROUTING}/abort", headers=ADMIN)
        assert change.status_code == 503
        assert change.json()["type"].endswith("rollouts-unavailable")
        assert httpx.codes.is_success((await client.get("/v2/health/ready")).status_code)
