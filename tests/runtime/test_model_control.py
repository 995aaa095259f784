"""MODEL_CONTROL none, poll and explicit, the repository API, and version policies (in-process)."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest
import torch

from service.packaging.package import PackageRequest, package_module
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration

TOKEN = "a-long-enough-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"instances": [[1.0, 2.0, 3.0, 4.0]]}


def add_version(repo: Path, name: str, version: int) -> None:
    """A tiny tensor model; each version has its own weights."""
    torch.manual_seed(version)
    module = torch.nn.Linear(4, 3)
    package_module(
        module, (torch.zeros(2, 4),), PackageRequest(output=repo, name=name, version=version)
    )


async def wait_for(check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    add_version(tmp_path / "repo", "tiny", 1)
    add_version(tmp_path / "repo", "other", 1)
    return tmp_path / "repo"


async def test_explicit_load_serve_unload(repo: Path, make_settings: SettingsFactory) -> None:
    settings = make_settings(
        model_repository=repo, models=[], model_control="explicit", admin_token=TOKEN
    )
    async with serve(settings) as c:
        assert (await c.get("/v2/health/ready")).status_code == 200  # nothing to load yet
        index = (await c.post("/v2/repository/index", headers=AUTH)).json()
        assert {(m["name"], m["state"]) for m in index} == {
            ("tiny", "UNAVAILABLE"),
            ("other", "UNAVAILABLE"),
        }
        assert (await c.post("/v1/models/tiny:predict", json=BODY)).status_code == 404

        r = await c.post("/v2/repository/models/tiny/load", headers=AUTH, content=b"{}")
        assert r.status_code == 200, r.text
        r = await c.post("/v1/models/tiny:predict", json=BODY)
        assert r.status_code == 200
        assert r.headers["X-Model-Version"] == "1"
        ready = (await c.post("/v2/repository/index", headers=AUTH, json={"ready": True})).json()
        assert ready == [{"name": "tiny", "version": "1", "state": "READY"}]

        r = await c.post("/v2/repository/models/tiny/unload", headers=AUTH, json={})
        assert r.status_code == 200, r.text
        assert (await c.post("/v1/models/tiny:predict", json=BODY)).status_code == 404

        r = await c.post("/v2/repository/models/nope/load", headers=AUTH)
        assert r.status_code == 404
        assert r.json()["error"] == "model 'nope' is not in the repository"
        r = await c.post("/v2/repository/models/tiny/unload", headers=AUTH)
        assert r.status_code == 404


async def test_the_repository_api_needs_the_admin_token(
    repo: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(model_repository=repo, model_control="explicit", admin_token=TOKEN)
    async with serve(settings) as c:
        for path in ("/v2/repository/index", "/v2/repository/models/tiny/load"):
            assert (await c.post(path)).status_code == 401
            wrong = {"Authorization": "Bearer not-the-token"}
            r = await c.post(path, headers=wrong)
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
    async with serve(make_settings(model_repository=repo, model_control="explicit")) as c:
        r = await c.post("/v2/repository/index", headers=AUTH)
        assert r.status_code == 403
        assert "needs ADMIN_TOKEN" in r.json()["detail"]


async def test_load_is_refused_unless_the_mode_is_explicit(
    repo: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(model_repository=repo, models=["tiny"], admin_token=TOKEN)
    async with serve(settings) as c:
        r = await c.post("/v2/repository/models/tiny/load", headers=AUTH)
        assert r.status_code == 409
        assert "MODEL_CONTROL=none" in r.json()["error"]
        # The index works in every mode.
        index = (await c.post("/v2/repository/index", headers=AUTH)).json()
        assert {"name": "tiny", "version": "1", "state": "READY"} in index


async def test_poll_loads_new_versions_removes_old_and_keeps_serving_past_a_broken_one(
    repo: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(
        model_repository=repo, models=["tiny"], model_control="poll", model_poll_s=0.1
    )
    async with serve(settings) as c:

        async def default_is(version: str) -> bool:
            r = await c.post("/v1/models/tiny:predict", json=BODY)
            assert r.status_code == 200, r.text
            return bool(r.headers["X-Model-Version"] == version)

        assert await default_is("1")
        add_version(repo, "tiny", 2)
        await wait_for(lambda: default_is("2"))
        shutil.rmtree(repo / "tiny" / "1")
        await wait_for(lambda: _versions(c, "tiny", ["2"]))
        assert (await c.post("/v1/models/tiny/versions/1:predict", json=BODY)).status_code == 404

        # A version 3 whose artifact does not match its manifest: reported, and 2 serves on.
        add_version(repo, "tiny", 3)
        with (repo / "tiny" / "3" / "model.pt2").open("ab") as artifact:
            artifact.write(b"tampered")
        await wait_for(lambda: _versions(c, "tiny", ["2", "3"]))
        assert await default_is("2")
        models = (await c.get("/v1/models")).json()["models"]
        broken = next(v for v in models[0]["versions"] if v["version"] == "3")
        assert broken["ready"] is False
        assert "sha256 mismatch" in broken["error"]
        metadata = (await c.get("/v2/models/tiny/versions/3")).json()
        assert "sha256 mismatch" in metadata["error"]
        assert (await c.get("/v2/health/ready")).status_code == 200


@pytest.mark.parametrize(
    ("policy", "served"),
    [("all", ["1", "2", "3"]), ("latest:2", ["2", "3"]), ("specific:1,3", ["1", "3"])],
)
async def test_version_policies(
    repo: Path, make_settings: SettingsFactory, policy: str, served: list[str]
) -> None:
    add_version(repo, "tiny", 2)
    add_version(repo, "tiny", 3)
    overrides = {"tiny": {"version_policy": policy}}
    settings = make_settings(model_repository=repo, models=["tiny"], model_settings=overrides)
    async with serve(settings) as c:
        assert await _versions(c, "tiny", served)
        r = await c.post("/v1/models/tiny:predict", json=BODY)
        assert r.headers["X-Model-Version"] == served[-1]


def test_an_invalid_version_policy_stops_startup(make_settings: SettingsFactory) -> None:
    with pytest.raises(ValueError, match="is not all, latest:N or specific"):
        make_settings(model_version_policy="newest")


async def _versions(client: httpx.AsyncClient, name: str, expected: list[str]) -> bool:
    models = (await client.get("/v1/models")).json()["models"]
    entry = next((m for m in models if m["name"] == name), None)
    return entry is not None and [v["version"] for v in entry["versions"]] == expected
