"""The compose stack, end to end: built from compose/compose.local.yml (no registry), brought up
by scripts/stack, and driven through nginx on 127.0.0.1.

The tests share one stack and run in file order; each step leaves the stack as the next one
expects. One invariant holds throughout: every prediction request that reached a replica (its
response carries X-Replica-ID) is exactly one row in Postgres, whatever failed meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.digits_data import held_out
from tests.e2e.docker_cli import ROOT, docker
from tests.e2e.server import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

PROJECT = "torchdock-e2e"
API_IMAGE = "torchdock:test"
SERVICES = {
    "api", "nginx", "redis", "postgres", "prometheus",
    "postgres-exporter", "redis-exporter", "nginx-exporter",
}  # fmt: skip
# The official nginx-prometheus-exporter image is FROM scratch: nothing to run a probe with.
NO_HEALTHCHECK = {"nginx-exporter"}
DIGITS = "/v1/models/digits:predict"


class Stack:
    def __init__(self, env: dict[str, str], http_port: int, prometheus_port: int) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{http_port}"
        self.prometheus = f"http://127.0.0.1:{prometheus_port}"
        self.logged = 0  # prediction responses that came from a replica: one row each
        self._lock = threading.Lock()

    def script(self, *args: str, timeout: float = 1200) -> str:
        result = subprocess.run(
            [str(ROOT / "scripts" / "stack"), "--local", *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"stack {args}:\n{result.stdout}\n{result.stderr[-6000:]}"
        return result.stdout

    def compose(self, *args: str) -> str:
        return self.script("compose", *args, timeout=300)

    def containers(self, service: str) -> list[dict[str, Any]]:
        ids = self.compose("ps", "--quiet", service).split()
        return [json.loads(docker("inspect", i).stdout)[0] for i in ids]

    def psql(self, sql: str) -> str:
        return self.compose(
            "exec", "-T", "postgres", "psql", "--username=torchdock", "--dbname=torchdock",
            "--tuples-only", "--no-align", "--command", sql,
        ).strip()  # fmt: skip

    def rows(self) -> int:
        return int(self.psql("SELECT count(*) FROM predictions"))

    def count(self, response: httpx.Response) -> None:
        if "x-replica-id" in response.headers:
            with self._lock:
                self.logged += 1

    def predict(self, client: httpx.Client, image: np.ndarray, **headers: str) -> httpx.Response:
        response = client.post(f"{self.url}{DIGITS}", json={"instances": [image.tolist()]},
                               headers=headers)  # fmt: skip
        self.count(response)
        return response

    def wait_for_rows(self, timeout: float = 90) -> None:
        wait_until(lambda: self.rows() == self.logged, timeout, "every prediction logged")
        time.sleep(1)
        assert self.rows() == self.logged, "no row may be logged twice"

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} | ({"time": str(at)} if at else {})
        response = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (AssertionError, httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")


@pytest.fixture(scope="module")
def stack(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("stack")
    secrets = work / "secrets"
    subprocess.run([str(ROOT / "scripts" / "make-secrets"), str(secrets)], check=True,
                   capture_output=True)  # fmt: skip
    http_port, prometheus_port = free_port(), free_port()
    env_file = work / "stack.env"
    env_file.write_text(
        f"TORCHDOCK_IMAGE={API_IMAGE}\nAPI_REPLICAS=3\nHTTP_BIND=127.0.0.1\n"
        f"HTTP_PORT={http_port}\nPROMETHEUS_PORT={prometheus_port}\nSECRETS_DIR={secrets}\n"
    )
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": PROJECT,
        "TORCHDOCK_ENV_FILE": str(env_file),
        "BUILDKIT_PROGRESS": "plain",
    }
    stack = Stack(env, http_port, prometheus_port)
    stack.script("down", "--volumes")  # what an interrupted earlier run may have left
    started = time.monotonic()
    stack.script("up")
    print(f"stack up (with image builds) in {time.monotonic() - started:.0f} s")
    try:
        yield stack
    finally:
        stack.script("down", "--volumes")


class Load:
    """Digits predictions at a steady rate from a few threads, each outcome recorded.

    The inputs are random, so that every request is computed (a cache miss), and the rate stays
    well under nginx's per-client limit.
    """

    def __init__(self, stack: Stack, *, rate: float = 40.0, threads: int = 4) -> None:
        self.stack = stack
        self.interval = threads / rate
        self.outcomes: list[int | str] = []
        self.replicas: Counter[str] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        self._lock = threading.Lock()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def failures(self) -> list[int | str]:
        return [o for o in self.outcomes if o != 200]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed + int(time.time()))
        with httpx.Client(timeout=30) as client:
            due = time.monotonic()
            while not self._stop.is_set():
                outcome: int | str
                try:
                    response = self.stack.predict(client, rng.random((8, 8)) * 16)
                    outcome = response.status_code
                    replica = response.headers.get("x-replica-id", "-")
                except httpx.HTTPError as e:
                    outcome, replica = type(e).__name__, "-"
                with self._lock:
                    self.outcomes.append(outcome)
                    self.replicas[replica] += 1
                due += self.interval
                time.sleep(max(0.0, due - time.monotonic()))


def api_hostnames(stack: Stack) -> set[str]:
    return {c["Config"]["Hostname"] for c in stack.containers("api") if c["State"]["Running"]}


def test_every_service_becomes_healthy(stack: Stack) -> None:
    listed = stack.compose("ps", "--all", "--format", "json").strip()
    # One JSON object per line (Compose >= 2.21), or one array (older releases).
    containers = (
        json.loads(listed)
        if listed.startswith("[")
        else [json.loads(line) for line in listed.splitlines()]
    )
    assert {c["Service"] for c in containers} == SERVICES
    assert Counter(c["Service"] for c in containers)["api"] == 3
    for c in containers:
        assert c["State"] == "running", c
        expected = "" if c["Service"] in NO_HEALTHCHECK else "healthy"
        assert c["Health"] == expected, c


def test_300_predictions_through_nginx(stack: Stack) -> None:
    images, labels = held_out()
    outcomes: list[tuple[int, str, str]] = []
    correct = 0
    with httpx.Client(timeout=30) as client:
        for _ in range(2):
            for image, label in zip(images[:150], labels[:150], strict=True):
                r = stack.predict(client, image)
                outcomes.append((r.status_code, r.headers["x-replica-id"], r.headers["x-cache"]))
                correct += r.json()["predictions"][0]["label"] == label
    assert [status for status, _, _ in outcomes] == [200] * 300
    assert correct / 300 >= 0.95
    # least_conn spreads even a sequential client over every replica.
    assert {replica for _, replica, _ in outcomes} == api_hostnames(stack)
    # Redis is shared: the second round hits whichever replica computed the first.
    assert [cache for _, _, cache in outcomes[150:]] == ["hit"] * 150
    assert int(stack.compose("exec", "-T", "redis", "redis-cli", "dbsize")) >= 150
    stack.wait_for_rows()
    assert stack.rows() == 300


def test_prometheus_scrapes_every_target_and_each_replica(stack: Stack) -> None:
    api_ips = {
        c["NetworkSettings"]["Networks"][f"{PROJECT}_monitoring"]["IPAddress"]
        for c in stack.containers("api")
    }

    def all_up() -> bool:
        targets = httpx.get(f"{stack.prometheus}/api/v1/targets", timeout=10).json()
        active = targets["data"]["activeTargets"]
        api = {t["labels"]["replica"] for t in active if t["labels"]["job"] == "api"}
        return api == {f"{ip}:8000" for ip in api_ips} and all(t["health"] == "up" for t in active)

    wait_until(all_up, 120, "every target up, one per api replica")
    up = stack.query("up")
    assert {s["metric"]["job"] for s in up} == {"api", "nginx", "redis", "postgres", "prometheus"}
    assert all(s["value"][1] == "1" for s in up)
    assert len([s for s in up if s["metric"]["job"] == "api"]) == 3
    # The exporters really reach their services, not only answer the scrape.
    assert stack.query("redis_up")[0]["value"][1] == "1"
    assert stack.query("pg_up")[0]["value"][1] == "1"
    assert stack.query("nginx_up")[0]["value"][1] == "1"


def test_replica_stop_scale_and_rolling_restart_fail_no_request(stack: Stack) -> None:
    with Load(stack) as load:
        time.sleep(4)
        victim = stack.containers("api")[0]["Id"]
        docker("stop", "--time", "45", victim)
        time.sleep(16)
    assert len(load.outcomes) > 300
    assert load.failures == [], Counter(load.failures)

    with Load(stack) as load:
        stack.script("scale", "4")
        assert len(api_hostnames(stack)) == 4
        time.sleep(8)  # nginx re-resolves the replicas every 5 s
        stack.script("scale", "2")
        time.sleep(3)
    assert load.failures == [], Counter(load.failures)
    assert len(load.replicas) >= 4, "a new replica must get traffic once nginx sees it"

    before = api_hostnames(stack)
    with Load(stack) as load:
        stack.script("rolling-restart")
        time.sleep(8)
    after = api_hostnames(stack)
    assert load.failures == [], Counter(load.failures)
    assert len(after) == 2 and not after & before, "every replica must have been replaced"
    with Load(stack) as load:
        time.sleep(4)
    assert set(load.replicas) == after, "nginx must have moved to the new replicas"
    stack.wait_for_rows()


def test_database_and_cache_outages_fail_no_request_and_lose_no_row(stack: Stack) -> None:
    with Load(stack, rate=30) as load:
        time.sleep(2)
        stack.compose("stop", "postgres")
        time.sleep(10)
        stack.compose("start", "postgres")
        time.sleep(3)
    assert load.failures == [], Counter(load.failures)
    stack.wait_for_rows(timeout=120)

    with Load(stack, rate=30) as load:
        time.sleep(2)
        stack.compose("stop", "redis")
        time.sleep(6)
    assert load.failures == [], Counter(load.failures)
    stack.compose("up", "--detach", "--wait", "--no-build", "redis")
    stack.wait_for_rows()


def test_the_edge(stack: Stack) -> None:
    image = held_out()[0][0]
    with httpx.Client(timeout=30) as client:
        given = stack.predict(client, image, **{"X-Request-ID": "e2e-edge-1"})
        made = stack.predict(client, image)
        refused = stack.predict(client, image, **{"X-Request-ID": "not a valid id"})
        too_big = client.post(f"{stack.url}{DIGITS}", content=b"x" * (5 * 1024 * 1024),
                              headers={"Content-Type": "application/json"})  # fmt: skip
        metrics = client.get(f"{stack.url}/metrics")
    assert given.headers.get_list("x-request-id") == ["e2e-edge-1"]
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    for response in (given, made):
        assert response.headers["server"] == "nginx"  # no version
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    # nginx refuses the body itself, with the API's problem shape and the request id.
    assert too_big.status_code == 413
    assert too_big.headers["content-type"] == "application/problem+json"
    assert "x-replica-id" not in too_big.headers
    assert too_big.json()["request_id"] == too_big.headers["x-request-id"]
    assert metrics.status_code == 404
    # The id nginx made is the one the replica logged.
    stack.wait_for_rows()
    for response in (given, made):
        request_id = response.headers["x-request-id"]
        logged = f"SELECT count(*) FROM predictions WHERE request_id = '{request_id}'"
        assert stack.psql(logged) == "1"
    access = [
        json.loads(line)
        for line in stack.compose("logs", "--no-log-prefix", "nginx").splitlines()
        if line.startswith("{")
    ]
    mine = [a for a in access if a["request_id"] == "e2e-edge-1"]
    assert len(mine) == 1 and mine[0]["status"] == 200
    assert mine[0]["upstream_addr"].endswith(":8000")
    assert float(mine[0]["upstream_response_time"]) > 0


def test_a_client_over_its_rate_gets_429_problems(stack: Stack) -> None:
    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=stack.url, limits=limits, timeout=30) as client:
            seen: list[httpx.Response] = []
            for _ in range(10):
                batch = [client.get("/v2/health/live") for _ in range(400)]
                seen += await asyncio.gather(*batch)
                if any(r.status_code == 429 for r in seen):
                    break
            return seen

    responses = asyncio.run(burst())
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "nginx must limit one client's rate"
    assert {r.status_code for r in responses} == {200, 429}
    sample = limited[0]
    assert sample.headers["content-type"] == "application/problem+json"
    assert sample.headers["retry-after"] == "1"
    assert sample.json()["status"] == 429
    assert sample.json()["request_id"] == sample.headers["x-request-id"]
    time.sleep(3)  # let the client's bucket refill for the next steps


def test_security(stack: Stack) -> None:
    everything = [c for s in SERVICES for c in stack.containers(s)]
    nginx = stack.containers("nginx")[0]
    postgres = stack.containers("postgres")[0]
    postgres_ip = postgres["NetworkSettings"]["Networks"][f"{PROJECT}_backend"]["IPAddress"]

    def reach(container: dict[str, Any], host: str) -> int:
        probe = f"exec 3<>/dev/tcp/{host}/5432"
        return docker("exec", container["Id"], "timeout", "5", "bash", "-c", probe,
                      check=False).returncode  # fmt: skip

    # The control: the api does reach Postgres, by name and by address.
    api = stack.containers("api")[0]
    assert reach(api, "postgres") == 0 and reach(api, postgres_ip) == 0
    # nginx can neither resolve Postgres nor route to it.
    assert reach(nginx, "postgres") != 0
    assert reach(nginx, postgres_ip) != 0
    backend = json.loads(docker("network", "inspect", f"{PROJECT}_backend").stdout)[0]
    assert backend["Internal"] is True

    for c in everything:
        name = c["Name"]
        status = Path(f"/proc/{c['State']['Pid']}/status").read_text()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.MULTILINE)
        assert uids and "0" not in uids.group(1).split(), f"{name} runs as root"
        host = c["HostConfig"]
        assert host["ReadonlyRootfs"], name
        assert "ALL" in host["CapDrop"], name
        assert "no-new-privileges:true" in host["SecurityOpt"], name
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, f"{name} has no limits"
        published = {
            port: bindings for port, bindings in c["NetworkSettings"]["Ports"].items() if bindings
        }
        service = c["Config"]["Labels"]["com.docker.compose.service"]
        if service in {"nginx", "prometheus"}:
            assert [b["HostIp"] for b in next(iter(published.values()))] == ["127.0.0.1"], name
        else:
            assert not published, f"{name} publishes {published}"


def test_down_then_up_keeps_the_data_and_down_volumes_removes_it(stack: Stack) -> None:
    stack.wait_for_rows()
    rows = stack.rows()
    wait_until(lambda: bool(stack.query('up{job="api"}')), 60, "api samples in Prometheus")
    before = time.time()
    stack.script("down")
    stack.script("up")
    assert stack.rows() == rows
    # Samples from before the restart are still there: the TSDB is on its volume.
    wait_until(lambda: bool(stack.query('up{job="api"}', at=before)), 60, "old samples back")

    stack.script("down", "--volumes")
    volumes = docker("volume", "ls", "--quiet").stdout.split()
    assert not [v for v in volumes if v.startswith(f"{PROJECT}_")], volumes
