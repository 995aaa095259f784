"""The Redis prediction cache with a real Redis: hits, partial hits, versions, single-flight,
bypass, purge, a Redis that dies and comes back, and a password from a file."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from service.packaging.bundled import digits
from tests.conftest import SettingsFactory, serve
from tests.faults import TcpProxy
from tests.prom import sample_value

pytestmark = pytest.mark.integration

PREDICT = "/v1/models/digits:predict"


def grid(value: float) -> list[list[float]]:
    return [[value] * 8 for _ in range(8)]


async def computed_instances(http: httpx.AsyncClient, version: str = "1") -> float:
    text = (await http.get("/metrics")).text
    return sample_value(
        text, "torchdock_instances_total", model_name="digits", model_version=version
    )


async def test_hit_is_byte_identical(make_settings: SettingsFactory, redis_url: str) -> None:
    async with serve(make_settings(redis_url=redis_url)) as http:
        body = {"instances": [grid(3.0), grid(5.0)]}
        first = await http.post(PREDICT, json=body)
        second = await http.post(PREDICT, json=body)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert first.content == second.content


async def test_embedding_hit_is_byte_identical(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    async with serve(make_settings(redis_url=redis_url, models=["minilm"])) as http:
        body = {"instances": ["a sentence worth caching", "and another one"]}
        first = await http.post("/v1/models/minilm:predict", json=body)
        second = await http.post("/v1/models/minilm:predict", json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert first.content == second.content


async def test_partial_computes_only_missing(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    async with serve(make_settings(redis_url=redis_url)) as http:
        warm = [grid(float(v)) for v in range(6)]
        assert (await http.post(PREDICT, json={"instances": warm})).headers["x-cache"] == "miss"
        before = await computed_instances(http)
        mixed = [*warm, grid(7.0), grid(8.0)]  # 8 instances, 6 of them cached
        r = await http.post(PREDICT, json={"instances": mixed})
        after = await computed_instances(http)
        alone = await http.post(PREDICT, json={"instances": [grid(7.0)]})
    assert r.headers["x-cache"] == "partial"
    assert after - before == 2
    assert r.json()["predictions"][6] == alone.json()["predictions"][0]
    assert alone.headers["x-cache"] == "hit"


async def test_equivalent_inputs_share_an_entry(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    async with serve(make_settings(redis_url=redis_url)) as http:
        await http.post(PREDICT, json={"instances": [grid(2.0)]})
        flat = await http.post(PREDICT, json={"instances": [[2.0] * 64]})
        ints = await http.post(PREDICT, json={"instances": [[[2] * 8] * 8]})
    assert flat.headers["x-cache"] == "hit"
    assert ints.headers["x-cache"] == "hit"


async def test_versions_never_collide(
    make_settings: SettingsFactory, redis_url: str, repo_copy: Path
) -> None:
    digits.build(repo_copy, version=2)
    async with serve(make_settings(redis_url=redis_url, model_repository=repo_copy)) as http:
        body = {"instances": [grid(4.0)]}
        v1 = await http.post("/v1/models/digits/versions/1:predict", json=body)
        v2 = await http.post("/v1/models/digits/versions/2:predict", json=body)
        v1_again = await http.post("/v1/models/digits/versions/1:predict", json=body)
    assert [v1.headers["x-cache"], v2.headers["x-cache"]] == ["miss", "miss"]
    assert v1_again.headers["x-cache"] == "hit"
    keys = redis.Redis.from_url(redis_url).keys("torchdock:pred:v1:digits:*")
    assert {k.decode().split(":")[4] for k in keys} == {"1", "2"}


async def test_single_flight_computes_once(make_settings: SettingsFactory, redis_url: str) -> None:
    settings = make_settings(
        redis_url=redis_url, model_settings={"digits": {"max_batch_delay_ms": 200}}
    )
    async with serve(settings) as http:
        before = await computed_instances(http)
        responses = await asyncio.gather(
            *(http.post(PREDICT, json={"instances": [grid(6.0)]}) for _ in range(10))
        )
        after = await computed_instances(http)
    assert all(r.status_code == 200 for r in responses)
    assert len({r.content for r in responses}) == 1
    assert after - before == 1


async def test_no_cache_header_bypasses(make_settings: SettingsFactory, redis_url: str) -> None:
    async with serve(make_settings(redis_url=redis_url)) as http:
        await http.post(PREDICT, json={"instances": [grid(1.0)]})
        r = await http.post(
            PREDICT, json={"instances": [grid(1.0)]}, headers={"Cache-Control": "no-cache"}
        )
    assert r.headers["x-cache"] == "bypass"


async def test_without_redis_the_cache_is_bypassed(make_settings: SettingsFactory) -> None:
    async with serve(make_settings()) as http:
        r = await http.post(PREDICT, json={"instances": [grid(1.0)]})
    assert r.headers["x-cache"] == "bypass"


async def test_closed_port_never_fails_a_request(make_settings: SettingsFactory) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0", cache_breaker_reset_s=60)
    async with serve(settings) as http:
        responses = [await http.post(PREDICT, json={"instances": [grid(2.0)]}) for _ in range(8)]
        metrics = (await http.get("/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    assert sample_value(metrics, "torchdock_cache_breaker_state") == 1  # open
    assert sample_value(metrics, "torchdock_cache_skipped_total", operation="get") >= 1


async def test_breaker_opens_when_redis_dies_and_closes_when_it_returns(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    target = urlsplit(redis_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 6379)
    url = f"redis://127.0.0.1:{proxy.port}{target.path}"
    settings = make_settings(redis_url=url, cache_breaker_reset_s=0.5)
    try:
        async with serve(settings) as http:
            body = {"instances": [grid(9.0)]}
            assert (await http.post(PREDICT, json=body)).headers["x-cache"] == "miss"
            assert (await http.post(PREDICT, json=body)).headers["x-cache"] == "hit"
            proxy.down()
            during = [await http.post(PREDICT, json=body) for _ in range(6)]
            assert all(r.status_code == 200 for r in during)
            state = sample_value((await http.get("/metrics")).text, "torchdock_cache_breaker_state")
            assert state in (1, 2)  # open (or half-open once the reset timeout passed)
            proxy.up()
            await asyncio.sleep(0.6)
            recovered = [await http.post(PREDICT, json=body) for _ in range(3)]
            metrics = (await http.get("/metrics")).text
    finally:
        proxy.close()
    assert recovered[-1].headers["x-cache"] == "hit"
    assert sample_value(metrics, "torchdock_cache_breaker_state") == 0


async def test_purge_command(make_settings: SettingsFactory, redis_url: str) -> None:
    async with serve(make_settings(redis_url=redis_url, models=[])) as http:
        await http.post(PREDICT, json={"instances": [grid(1.0), grid(2.0)]})
        await http.post("/v1/models/minilm:predict", json={"instances": ["keep me"]})
    client = redis.Redis.from_url(redis_url)
    assert len(client.keys("torchdock:pred:v1:digits:*")) == 2
    purge = subprocess.run(
        [str(Path(sys.executable).parent / "torchdock"), "cache", "purge", "--model", "digits"],
        env={"REDIS_URL": redis_url, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "removed 2" in purge.stdout
    assert client.keys("torchdock:pred:v1:digits:*") == []
    assert len(client.keys("torchdock:pred:v1:minilm:*")) == 1


async def test_per_model_policy(make_settings: SettingsFactory, redis_url: str) -> None:
    settings = make_settings(
        redis_url=redis_url,
        models=[],
        model_settings={
            "digits": {"cache": False},
            "minilm": {"cache_max_value_bytes": 1000, "cache_ttl_s": 7},
        },
    )
    async with serve(settings) as http:
        off = await http.post(PREDICT, json={"instances": [grid(3.0)]})
        big = await http.post("/v1/models/minilm:predict", json={"instances": ["too big"]})
        again = await http.post("/v1/models/minilm:predict", json={"instances": ["too big"]})
    assert off.headers["x-cache"] == "bypass"
    # A 384-float embedding is 1,539 bytes encoded: over this model's 1,000-byte limit.
    assert (big.headers["x-cache"], again.headers["x-cache"]) == ("miss", "miss")
    assert redis.Redis.from_url(redis_url).keys("torchdock:pred:*") == []


async def test_entries_expire_with_the_models_ttl(
    make_settings: SettingsFactory, redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url, model_settings={"digits": {"cache_ttl_s": 7}})
    async with serve(settings) as http:
        await http.post(PREDICT, json={"instances": [grid(5.0)]})
    client = redis.Redis.from_url(redis_url)
    (key,) = client.keys("torchdock:pred:v1:digits:*")
    assert 0 < client.ttl(key) <= 7


@pytest.fixture
def redis_user(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Redis user with a password on the test server: its URL (a name, no password), and a
    file with its password, as a Docker secret would hold it."""
    name = f"torchdock-test-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24) + "/+%"  # characters a URL must escape
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["*"],
                      commands=["+@all"])  # fmt: skip
    secret = tmp_path / "redis_password"
    secret.write_text(password + "\n")
    target = urlsplit(redis_url)
    try:
        yield f"redis://{name}@{target.hostname}:{target.port}{target.path}", secret
    finally:
        admin.acl_deluser(name)
        admin.close()


async def test_the_password_comes_from_its_file(
    make_settings: SettingsFactory, redis_user: tuple[str, Path]
) -> None:
    url, secret = redis_user
    async with serve(make_settings(redis_url=url, redis_password_file=secret)) as http:
        body = {"instances": [grid(4.0)]}
        first = await http.post(PREDICT, json=body)
        second = await http.post(PREDICT, json=body)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")

    purge = subprocess.run(
        [str(Path(sys.executable).parent / "torchdock"), "cache", "purge"],
        env={"REDIS_URL": url, "REDIS_PASSWORD_FILE": str(secret), "PATH": ""},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert purge.returncode == 0, purge.stderr
    assert "removed 1" in purge.stdout


async def test_a_wrong_password_degrades_to_no_cache(
    make_settings: SettingsFactory, redis_user: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = redis_user
    wrong = tmp_path / "wrong_password"
    wrong.write_text("not-the-password")
    settings = make_settings(redis_url=url, redis_password_file=wrong, cache_breaker_reset_s=60)
    async with serve(settings) as http:
        responses = [await http.post(PREDICT, json={"instances": [grid(6.0)]}) for _ in range(5)]
        metrics = (await http.get("/metrics")).text
    assert [r.status_code for r in responses] == [200] * 5
    assert {r.headers["x-cache"] for r in responses} <= {"miss", "bypass"}
    assert sample_value(metrics, "torchdock_cache_breaker_state") == 1  # open
