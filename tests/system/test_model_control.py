"""Loading, unloading and polling under load, on real gunicorn with two workers: no request fails.

Load comes from four threads, each with its own connection, so that both workers serve it.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from service.packaging.package import PackageRequest, package_module
from tests.system.server import ServerProcess, wait_until
from tests.traffic import Traffic

pytestmark = pytest.mark.system

httpclient = pytest.importorskip("tritonclient.http")

TOKEN = "an-admin-token-long-enough-for-the-e2e-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BODY = {"instances": [[1.0, 2.0, 3.0, 4.0]]}


def add_version(repo: Path, version: int) -> None:
    torch.manual_seed(version)
    package_module(
        torch.nn.Linear(4, 3),
        (torch.zeros(2, 4),),
        PackageRequest(output=repo, name="tiny", version=version),
    )


class TinyTraffic(Traffic):
    """Predictions as fast as they come, every answer counted by status and served version."""

    def __init__(self, base_url: str, connections: int = 4) -> None:
        super().__init__(threads=connections)
        self.base_url = base_url
        self.results: Counter[tuple[int, str]] = Counter()

    def connect(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def send(self, client: httpx.Client, thread: int) -> None:
        try:
            r = client.post("/v1/models/tiny:predict", json=BODY)
            key = (r.status_code, r.headers.get("X-Model-Version", ""))
        except httpx.TransportError as e:
            key = (0, type(e).__name__)
        with self.lock:
            self.results[key] += 1

    def failures(self) -> dict[tuple[int, str], int]:
        with self.lock:
            return {k: n for k, n in self.results.items() if k[0] != 200}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    add_version(tmp_path / "repo", 1)
    return tmp_path / "repo"


def start(repo: Path, tmp_path: Path, **env: str) -> ServerProcess:
    server = ServerProcess(
        env={"MODEL_REPOSITORY": str(repo), "DEVICE": "cpu", "MODELS": '["tiny"]',
             "ADMIN_TOKEN": TOKEN, "PRECISION": "fp32", **env},
        workers=2,
        log_path=tmp_path / "server.log",
    )  # fmt: skip
    server.wait_ready()
    return server


@pytest.fixture
def explicit_server(repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    server = start(repo, tmp_path, MODEL_CONTROL="explicit")
    try:
        yield server
    finally:
        server.stop()


def test_explicit_load_switches_both_workers_with_no_error(
    explicit_server: ServerProcess, repo: Path
) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{explicit_server.port}")
    add_version(repo, 2)
    with TinyTraffic(explicit_server.base_url) as traffic:
        time.sleep(1)
        client.load_model("tiny", headers=AUTH)  # tritonclient, unchanged
        # Answered only once both workers serve version 2: nothing older from here on, on
        # any connection (each of these is a new one, taken by either worker).
        url = f"{explicit_server.base_url}/v1/models/tiny:predict"
        versions = Counter(
            httpx.post(url, json=BODY).headers["X-Model-Version"] for _ in range(100)
        )
        assert versions == {"2": 100}
        time.sleep(0.5)
    assert traffic.failures() == {}
    served = {version for (_, version) in traffic.results}
    assert served == {"1", "2"}, traffic.results
    print(f"explicit load under load: {dict(traffic.results)}")

    # A packaged user model through tritonclient's own inference call, as eager computes it.
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]])
    tensor = httpclient.InferInput("input", [2, 4], "FP32")
    tensor.set_data_from_numpy(features.numpy(), binary_data=False)
    wanted = [httpclient.InferRequestedOutput("output", binary_data=False)]
    result = client.infer("tiny", [tensor], model_version="2", outputs=wanted)
    torch.manual_seed(2)
    expected = torch.nn.Linear(4, 3)(features).detach().numpy()
    difference = float(abs(result.as_numpy("output") - expected).max())
    print(f"tritonclient infer on a packaged model: max abs diff to eager {difference:.3g}")
    assert difference < 1e-5

    index = client.get_model_repository_index(headers=AUTH)
    assert {(m["name"], m["version"], m["state"]) for m in index} == {
        ("tiny", "1", "READY"),
        ("tiny", "2", "READY"),
    }
    client.unload_model("tiny", headers=AUTH)
    assert not client.is_model_ready("tiny")
    with pytest.raises(httpclient.InferenceServerException, match="is not in the repository"):
        client.load_model("missing", headers=AUTH)
    with pytest.raises(httpclient.InferenceServerException, match="bearer token"):
        client.get_model_repository_index()


def test_poll_follows_the_repository_under_load(repo: Path, tmp_path: Path) -> None:
    server = start(repo, tmp_path, MODEL_CONTROL="poll", MODEL_POLL_S="0.3")
    try:
        with TinyTraffic(server.base_url) as traffic:
            time.sleep(1)
            add_version(repo, 2)
            wait_until(
                lambda: _all_recent(server, "2"), 30, "both workers on version 2", interval=0.1
            )
            shutil.rmtree(repo / "tiny" / "1")
            wait_until(lambda: _versions(server) == ["2"], 30, "version 1 unloaded", interval=0.1)
            time.sleep(1)
        assert traffic.failures() == {}
        assert {v for (_, v) in traffic.results} == {"1", "2"}
        print(f"poll under load: {dict(traffic.results)}")
    finally:
        server.stop()


def _all_recent(server: ServerProcess, version: str) -> bool:
    """Twenty answers on new connections, so from either worker, all from `version`."""
    url = f"{server.base_url}/v1/models/tiny:predict"
    return all(httpx.post(url, json=BODY).headers["X-Model-Version"] == version for _ in range(20))


def _versions(server: ServerProcess) -> list[str]:
    models = httpx.get(f"{server.base_url}/v1/models").json()["models"]
    return [v["version"] for v in models[0]["versions"]]
