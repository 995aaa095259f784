"""The CPU image, built for real with BuildKit and run on a real Docker engine.

The engine and the base image come from scripts/docker-engine and scripts/base-image where no
registry can be reached (`--local`); set TORCHDOCK_IMAGE_BASE=official to build from the
official base instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.storage import migrate
from tests.digits_data import held_out
from tests.paths import ROOT
from tests.system.docker_cli import docker
from tests.system.server import free_port

pytestmark = pytest.mark.docker

TAG = "torchdock:test"
SIZE_BUDGET = 1_200_000_000


def build(context: Path, *extra: str) -> str:
    local = os.environ.get("TORCHDOCK_IMAGE_BASE", "local") == "local"
    args = ["--local"] if local else []
    result = subprocess.run(
        [str(ROOT / "scripts" / "build-image"), *args, *extra],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "BUILDKIT_PROGRESS": "plain"},
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return result.stderr


@pytest.fixture(scope="session")
def image(docker_engine: None) -> str:
    build(ROOT, TAG)
    return TAG


class Container:
    def __init__(self, image: str, *run_args: str, env: dict[str, str] | None = None) -> None:
        self.name = f"torchdock-test-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        env_args = [f"--env={k}={v}" for k, v in (env or {}).items()]
        # The image's healthcheck, asked every 2 s instead of 10, so that waits end sooner.
        docker(
            "run", "--detach", "--name", self.name, "--health-interval", "2s",
            "--publish", f"127.0.0.1:{self.port}:8000",
            *env_args, *run_args, image,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            state = json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)
            status = (state.get("Health") or {}).get("Status", "")
            if status == "healthy":
                return
            if not state["Running"]:
                break
            time.sleep(1)
        logs = docker("logs", self.name, check=False)
        raise AssertionError(f"not healthy ({status}):\n{(logs.stdout + logs.stderr)[-3000:]}")

    def remove(self) -> None:
        docker("rm", "--force", self.name, check=False)


@pytest.fixture
def run_container(image: str) -> Iterator[type[Container]]:
    started: list[Container] = []

    class Tracked(Container):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(image, *args, env=env)
            started.append(self)

    yield Tracked
    for container in started:
        container.remove()


LIST_MIGRATIONS = (
    "from service.storage.migrate import available;"
    "print(*(f'{m.version:04d}_{m.name}' for m in available()))"
)


# A shadow process, as a worker starts one: it must predict, get SCHED_IDLE and move onto the
# CPUs kept for it (SHADOW_CPUS) in a hardened container too (no capabilities, no new
# privileges, a read-only root).
SHADOW_PROBE = (
    "import os, numpy as np;"
    "from service.config import Settings;"
    "from service.rollouts.shadow_process import ShadowProcess;"
    "from service.runtime.repository import discover;"
    "s = Settings(); ref = discover(s.model_repository)['digits'][0];"
    "cpus = frozenset({max(os.sched_getaffinity(0))});"
    "p = ShadowProcess(s, cpus=cpus); out = p.predict(ref, None, [np.zeros((8, 8))]);"
    "print(len(out), os.sched_getscheduler(p.pid) == os.SCHED_IDLE,"
    " os.getpriority(os.PRIO_PROCESS, p.pid), os.sched_getaffinity(p.pid) == cpus); p.stop()"
)


def predict_both(url: str) -> None:
    images, labels = held_out()
    v1 = httpx.post(f"{url}/v1/models/digits:predict", json={"instances": [images[0].tolist()]})
    assert v1.status_code == 200, v1.text
    assert v1.json()["predictions"][0]["label"] == labels[0]
    v2 = httpx.post(
        f"{url}/v2/models/minilm/infer",
        json={"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]},
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["shape"] == [1, 384]


def test_healthy_and_serving_as_uid_10001(run_container: type[Container], image: str) -> None:
    container = run_container()
    container.wait_healthy()
    predict_both(container.url)
    assert docker("exec", container.name, "id", "-u").stdout.strip() == "10001"
    # Package data (the schema migrations) is in the installed package, not only in the tree.
    listed = docker("exec", container.name, "python3", "-c", LIST_MIGRATIONS).stdout.split()
    assert listed == [f"{m.version:04d}_{m.name}" for m in migrate.available()]
    config = json.loads(docker("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "10001"
    # Settings are also read from ./.env: the working directory is one the app cannot write
    # (it was /tmp, where anything in the container could plant one).
    assert config["WorkingDir"] == "/opt/torchdock"
    docker("exec", container.name, "sh", "-c", 'test ! -w "$PWD" && test ! -e .env')
    labels = config["Labels"]
    for key in ("source", "version", "revision", "created"):
        assert labels[f"org.opencontainers.image.{key}"], key


def test_hardened_run(run_container: type[Container]) -> None:
    container = run_container(
        "--read-only",
        "--tmpfs", "/tmp:mode=1777",
        "--tmpfs", "/var/lib/torchdock/spool:mode=1777",
        "--user", "4242:0",
        "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
    )  # fmt: skip
    container.wait_healthy()
    predict_both(container.url)
    assert docker("exec", container.name, "id", "-u").stdout.strip() == "4242"
    shadow = docker("exec", container.name, "python3", "-c", SHADOW_PROBE).stdout.split()
    assert shadow == ["1", "True", "19", "True"]


def test_a_mounted_repository_is_polled_read_only_as_compose_mounts_it(
    run_container: type[Container], tmp_path: Path
) -> None:
    """compose.models.yml's bind mount: the image, hardened, serves what is packaged on the host,
    through ONNX Runtime where the version has an ONNX variant."""
    import torch

    from service.packaging.package import PackageRequest, package_module

    repo = tmp_path / "repo"

    def add(version: int) -> None:
        torch.manual_seed(version)
        request = PackageRequest(output=repo, name="tiny", version=version, onnx=True)
        package_module(torch.nn.Linear(4, 3), (torch.zeros(2, 4),), request)

    add(1)
    container = run_container(
        "--read-only", "--tmpfs", "/tmp:mode=1777",
        "--tmpfs", "/var/lib/torchdock/spool:mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{repo}:/opt/torchdock/models:ro",
        env={"MODEL_CONTROL": "poll", "MODEL_POLL_S": "0.5", "WORKERS": "1",
             "PRECISION": "fp32", "RUNTIME": "onnx"},
    )  # fmt: skip
    container.wait_healthy()
    listed = httpx.get(f"{container.url}/v1/models").json()["models"][0]["versions"][0]
    assert listed["runtime"] == "onnx", docker("logs", container.name).stderr[-3000:]
    body = {"instances": [[1.0, 2.0, 3.0, 4.0]]}
    predict = f"{container.url}/v1/models/tiny:predict"
    assert httpx.post(predict, json=body).headers["X-Model-Version"] == "1"
    add(2)  # written on the host by a user other than the container's
    deadline = time.monotonic() + 60
    while httpx.post(predict, json=body).headers["X-Model-Version"] != "2":
        assert time.monotonic() < deadline, docker("logs", container.name).stderr[-3000:]
        time.sleep(0.5)


def test_stop_lets_an_in_flight_request_finish(run_container: type[Container]) -> None:
    container = run_container(
        env={
            "MODEL_SETTINGS": '{"digits": {"max_batch_delay_ms": 1000}}',
            "DRAIN_DELAY_S": "1",
            "WORKERS": "1",
        }
    )
    container.wait_healthy()
    result: dict[str, httpx.Response] = {}

    def slow() -> None:
        result["r"] = httpx.post(
            f"{container.url}/v1/models/digits:predict",
            json={"instances": [[[1.0] * 8] * 8]},
            timeout=30,
        )

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    stop = docker("stop", "--time", "30", container.name)
    thread.join(30)
    assert stop.returncode == 0
    assert result["r"].status_code == 200
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container.name).stdout)
    assert state["ExitCode"] == 0


def test_no_secret_source_or_cache_in_the_image(image: str) -> None:
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    assert "PIP_CERT=/" not in history
    config = docker("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout
    assert "CERT" not in config and "TOKEN" not in config and "PASSWORD" not in config
    probe = (
        "import os, sys\n"
        "bad = [p for p in ('/src', '/root/.cache/pip', '/run/secrets/ca', '/wheelhouse')"
        " if os.path.exists(p)]\n"
        "for top in ('/opt', '/usr/lib/python3.11', '/tmp'):\n"
        "    for d, dirs, files in os.walk(top):\n"
        "        bad += [os.path.join(d, n) for n in dirs if n == '.git']\n"
        "        bad += [os.path.join(d, f) for f in files if f.endswith('.whl')]\n"
        "site = '/opt/venv/lib/python3.11/site-packages'\n"
        "bad += [p for p in ('tests', 'loadtests') if os.path.exists(os.path.join(site, p))]\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    result = docker("run", "--rm", "--entrypoint", "python3", image, "-c", probe, check=False)
    assert result.returncode == 0, result.stdout
    # The host's CA bundle (which may hold a proxy's CA) was a build secret, not a layer.
    host = Path("/etc/ssl/certs/ca-certificates.crt")
    if host.exists():
        inside = docker(
            "run", "--rm", "--entrypoint", "cat", image, "/etc/ssl/certs/ca-certificates.crt",
            check=False,
        ).stdout  # fmt: skip
        blocks = set(host.read_text().split("-----END CERTIFICATE-----"))
        assert not blocks or set(inside.split("-----END CERTIFICATE-----")) <= blocks


def test_the_build_writes_an_sbom_of_the_python_packages(image: str) -> None:
    sbom = json.loads((ROOT / "build" / "sbom" / "torchdock_test.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX"
    found = {c["name"].lower(): c.get("version", "") for c in sbom["components"]}
    assert found["torch"] == "2.13.0+cpu"
    assert {"fastapi", "gunicorn", "uvicorn", "psycopg", "redis", "torchdock"} <= found.keys()
    assert "scikit-learn" not in found, "build-only packages stay out of the image"
    assert all(c["purl"].startswith("pkg:pypi/") for c in sbom["components"])


def test_size_budget(image: str) -> None:
    size = int(docker("image", "inspect", "--format", "{{.Size}}", image).stdout)
    layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", image).stdout
    print(f"{image}: {size / 1e9:.3f} GB\n{layers}")
    assert size <= SIZE_BUDGET


def test_a_source_change_reuses_the_dependency_layer(image: str, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for name in ("constraints.txt", "pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "service", context / "service")
    shutil.copytree(ROOT / "docker", context / "docker")
    shutil.copytree(ROOT / "scripts", context / "scripts")
    init = context / "service" / "__init__.py"
    init.write_text(init.read_text() + f"\n# changed {uuid.uuid4().hex}\n")
    log = subprocess.run(
        [
            str(context / "scripts" / "build-image"),
            *(["--local"] if os.environ.get("TORCHDOCK_IMAGE_BASE", "local") == "local" else []),
            "torchdock:test-rebuild",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env={**os.environ, "BUILDKIT_PROGRESS": "plain", "BUILD_TARGET": "project"},
    )
    assert log.returncode == 0, log.stderr[-4000:]
    steps = {}
    for line in log.stderr.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0].startswith("#") and parts[1].startswith("["):
            steps[parts[0]] = parts[2]
    dependency = [s for s, text in steps.items() if "-r requirements.lock" in text]
    source = [s for s, text in steps.items() if "pip wheel --no-deps" in text]
    assert dependency and source, log.stderr[-3000:]
    assert f"{dependency[0]} CACHED" in log.stderr
    assert f"{source[0]} CACHED" not in log.stderr
    docker("image", "rm", "torchdock:test-rebuild", check=False)


def test_the_release_smoke_test_passes_on_the_image(image: str) -> None:
    # scripts/smoke-image is what the release workflow runs before it pushes anything.
    smoke = subprocess.run(
        [str(ROOT / "scripts" / "smoke-image"), image],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert "smoke test passed" in smoke.stderr


def test_the_release_smoke_test_fails_on_an_image_that_does_not_serve(image: str) -> None:
    # The same image, whose server exits at once: the script must say so and fail.
    broken = "torchdock:test-broken"
    docker("build", "--tag", broken, "-", input_text=f'FROM {image}\nENTRYPOINT ["false"]\n')
    try:
        smoke = subprocess.run(
            [str(ROOT / "scripts" / "smoke-image"), broken],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert smoke.returncode != 0
        assert "exited before it became healthy" in smoke.stderr
    finally:
        docker("image", "rm", broken, check=False)
