"""A compose stack for end-to-end tests: the local stack (compose/compose.local.yml) under its
own project name, on free ports on 127.0.0.1, with its secrets in a temporary folder, driven
through the same scripts an operator uses."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.paths import ROOT
from tests.system.docker_cli import docker
from tests.system.server import free_port, wait_until
from tests.traffic import Traffic

API_IMAGE = "torchdock:test"
DIGITS = "/v1/models/digits:predict"
# Checked every 2 s instead of 10: each start-up and rollout waits for a passing check, and
# the tests bring up four stacks and roll out a dozen replicas.
FAST_HEALTHCHECKS = "HEALTHCHECK_INTERVAL=2s\n"


class Stack:
    """A compose project of the local stack, driven through scripts/stack."""

    def __init__(
        self, project: str, env: dict[str, str], http_port: int, prometheus_port: int
    ) -> None:
        self.project = project
        self.env = env
        self.url = f"http://127.0.0.1:{http_port}"
        self.prometheus = f"http://127.0.0.1:{prometheus_port}"
        self.logged = 0  # prediction responses that came from a replica: one row each
        # Prediction ids of requests sent to a replica directly, past nginx (and its log).
        self.direct: set[str] = set()
        self.api_key = ""  # made once the compose stack is up, which wants one
        self._lock = threading.Lock()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def client(self) -> httpx.Client:
        """A client that sends the stack's API key."""
        return httpx.Client(timeout=30, headers=self.auth)

    def make_key(self, name: str, *options: str) -> str:
        return self.script("keys", "create", "--name", name, *options).strip()

    def wait_for_key(self, timeout: float = 60) -> None:
        """Until the replicas take the key (they read the keys table every few seconds)."""

        def taken() -> bool:
            # Ten in a row, over nginx's spread of them: every replica has read the table.
            with self.client() as client:
                return all(
                    client.get(f"{self.url}/v2/models/digits").status_code == 200 for _ in range(10)
                )

        wait_until(taken, timeout, "the API key taken by the replicas")

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

    def redis_keys(self) -> int:
        """DBSIZE, asked with the password from the redis container's secret."""
        answer = self.compose(
            "exec", "-T", "redis", "sh", "-c",
            'REDISCLI_AUTH="$(cat /run/secrets/redis_password)" exec redis-cli dbsize',
        )  # fmt: skip
        return int(answer)

    def rows(self) -> int:
        return int(self.psql("SELECT count(*) FROM predictions"))

    def count(self, response: httpx.Response) -> None:
        # A replica logs a row for each response with a prediction id; auth refusals have none.
        if "x-prediction-id" in response.headers:
            with self._lock:
                self.logged += 1

    def predict(self, client: httpx.Client, image: np.ndarray, **headers: str) -> httpx.Response:
        response = client.post(f"{self.url}{DIGITS}", json={"instances": [image.tolist()]},
                               headers=headers)  # fmt: skip
        self.count(response)
        return response

    def wait_for_rows(self, timeout: float = 90) -> None:
        try:
            wait_until(lambda: self.rows() == self.logged, timeout, "every prediction logged")
        except AssertionError as e:
            # Which way it is off tells a lost row (fewer) from a miscounted client (more).
            counts = f"{self.rows()} rows, {self.logged} answered"
            raise AssertionError(f"{e}: {counts}\n{self.unmatched()}") from None
        time.sleep(1)
        assert self.rows() == self.logged, "no row may be logged twice"

    def access_log(self) -> list[dict[str, Any]]:
        """nginx's JSON access log so far, an entry a request."""
        lines = self.compose("logs", "--no-log-prefix", "nginx").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def secret_values(self) -> list[str]:
        """What the stack's secret files (made by running_stack) hold."""
        folder = Path(self.env["TORCHDOCK_ENV_FILE"]).parent / "secrets"
        return [file.read_text() for file in folder.iterdir()]

    def unmatched(self) -> str:
        """Where the rows and nginx's access log disagree: rows of no POST a replica answered,
        and POSTs a replica answered with a prediction id (every one it logs) and no row, or two."""
        rows = Counter(self.psql("SELECT prediction_id FROM predictions").split())
        posts = [
            entry
            for entry in self.access_log()
            if entry["method"] == "POST" and entry["upstream_addr"].endswith(":8000")
        ]
        answered = [entry for entry in posts if entry["prediction_id"]]
        ids = {entry["prediction_id"] for entry in answered}
        lines = [f"row of no answered POST: {i}" for i in rows.keys() - ids - self.direct]
        # Refused before any prediction began (no key, a key over its rate): no row is due.
        lines += [f"no prediction id: {json.dumps(e)}" for e in posts
                  if not e["prediction_id"] and e["status"] not in (401, 403, 429)]  # fmt: skip
        lines += [f"{rows[e['prediction_id']]} rows: {json.dumps(e)}" for e in answered
                  if rows[e["prediction_id"]] != 1]  # fmt: skip
        return "\n".join(lines[:50]) or "every answered POST has one row"

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql} | ({"time": str(at)} if at else {})
        response = httpx.get(f"{self.prometheus}/api/v1/query", params=params, timeout=10)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result


@contextmanager
def running_stack(
    work: Path, project: str, *, settings: str = "", overrides: tuple[Path, ...] = ()
) -> Iterator[Stack]:
    """Bring the stack up (images built from the working tree), and remove it and its volumes
    afterwards. `settings` are extra lines for its env file."""
    secrets = work / "secrets"
    subprocess.run([str(ROOT / "scripts" / "make-secrets"), str(secrets)], check=True,
                   capture_output=True)  # fmt: skip
    http_port, prometheus_port = free_port(), free_port()
    env_file = work / "stack.env"
    env_file.write_text(
        f"TORCHDOCK_IMAGE={API_IMAGE}\nAPI_REPLICAS=3\nHTTP_BIND=127.0.0.1\n{FAST_HEALTHCHECKS}"
        f"HTTP_PORT={http_port}\nPROMETHEUS_PORT={prometheus_port}\nSECRETS_DIR={secrets}\n"
        + settings
    )
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "TORCHDOCK_ENV_FILE": str(env_file),
        "TORCHDOCK_COMPOSE_OVERRIDES": " ".join(str(o) for o in overrides),
        "BUILDKIT_PROGRESS": "plain",
    }
    stack = Stack(project, env, http_port, prometheus_port)
    stack.script("down", "--volumes")  # what an interrupted earlier run may have left
    started = time.monotonic()
    stack.script("up")
    print(f"{project}: up (with image builds) in {time.monotonic() - started:.0f} s")
    stack.api_key = stack.make_key("e2e", "--rate-limit", "100000/second")
    stack.wait_for_key()
    try:
        yield stack
    finally:
        stack.script("down", "--volumes")


class Load(Traffic):
    """Digits predictions at a steady rate from a few threads, each outcome recorded.

    The inputs are random, so that every request is computed (a cache miss), and the rate stays
    well under nginx's per-client limit. The client keeps its connections alive, and does what
    the README asks of clients: when nginx closes an idle keep-alive connection (as a reload
    does) just as a request goes out on it, the connection drops without a response, and the
    request is sent again, once, on a new connection. Those are counted in `resent`; nginx
    never read such a request, so it reached no replica.
    """

    def __init__(self, stack: Stack, *, rate: float = 40.0, threads: int = 4) -> None:
        super().__init__(threads=threads, rate=rate)
        self.stack = stack
        self.outcomes: list[int | str] = []
        self.failed: list[str] = []  # what nginx and the replica said about each failure
        self.replicas: Counter[str] = Counter()
        self.model_versions: list[str] = []  # X-Model-Version of each success, in order
        self.resent = 0
        self._rngs = [np.random.default_rng(i + int(time.time())) for i in range(threads)]

    @property
    def failures(self) -> list[int | str]:
        return [o for o in self.outcomes if o != 200]

    def explain(self) -> str:
        """The failures, with nginx's access-log lines for their request ids."""
        ids = [f.split(":")[0] for f in self.failed]
        access = self.stack.compose("logs", "--no-log-prefix", "nginx").splitlines()
        lines = [line for line in access if any(i in line for i in ids if i != "None")]
        return "\n".join([*self.failed, *lines])

    def connect(self) -> httpx.Client:
        return self.stack.client()

    def send(self, client: httpx.Client, thread: int) -> None:
        outcome: int | str
        image = self._rngs[thread].random((8, 8)) * 16
        try:
            try:
                response = self.stack.predict(client, image)
            except httpx.RemoteProtocolError:
                with self.lock:
                    self.resent += 1
                response = self.stack.predict(client, image)
            outcome = response.status_code
            replica = response.headers.get("x-replica-id", "-")
            with self.lock:
                if outcome == 200:
                    self.model_versions.append(response.headers["x-model-version"])
                else:
                    self.failed.append(
                        f"{response.headers.get('x-request-id')}: {response.text[:300]}"
                    )
        except httpx.HTTPError as e:
            outcome, replica = type(e).__name__, "-"
            with self.lock:
                self.failed.append(repr(e))
        with self.lock:
            self.outcomes.append(outcome)
            self.replicas[replica] += 1
