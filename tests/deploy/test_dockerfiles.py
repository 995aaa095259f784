"""The Dockerfiles: the GPU image is built like the CPU one, and every image installs from one
index per pip call with every file's hash checked. (hadolint runs in scripts/lint.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.deploy

CPU = ROOT / "docker" / "Dockerfile"
GPU = ROOT / "docker" / "Dockerfile.gpu"


def build_args(dockerfile: Path) -> dict[str, str]:
    """ARG defaults, from the whole file."""
    found = {}
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"^ARG (\w+)(?:=(.*))?$", line.strip())
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


def test_gpu_image_matches_the_cpu_image() -> None:
    cpu, gpu = build_args(CPU), build_args(GPU)
    assert cpu["TORCH_VERSION"] == gpu["TORCH_VERSION"]
    assert cpu["BASE_IMAGE"] == gpu["BASE_IMAGE"]
    assert {"VERSION", "REVISION", "CREATED"} <= cpu.keys() & gpu.keys()
    assert "CUDA_VERSION" in gpu  # named once; the torch index and wheel tag derive from it
    gpu_text = GPU.read_text()
    for line in (
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility",
        "DEVICE=cuda",
        "USER 10001",
        "HEALTHCHECK",
    ):
        assert line in gpu_text
    # Same app: the same source, models and entrypoint.
    for line in ("COPY service ./service", 'ENTRYPOINT ["torchdock", "serve"]', "build-models"):
        assert line in CPU.read_text()
        assert line in gpu_text


@pytest.mark.parametrize("dockerfile", [CPU, GPU], ids=["cpu", "gpu"])
def test_the_runtime_takes_the_dependencies_and_the_project_apart(dockerfile: Path) -> None:
    """A source change rebuilds a wheel of a few hundred kB: the runtime's big venv layer comes
    from the dependency stage alone, and the project arrives as that wheel on top of it.
    (tests/system/test_image.py shows the dependency stage cached across a source change.)"""
    runtime = dockerfile.read_text().split(" AS runtime", 1)[1]
    assert "COPY --from=deps --chown=root:0 /opt/venv /opt/venv" in runtime
    assert "--mount=type=bind,from=project,source=/dist,target=/dist" in runtime
    assert "COPY service" not in runtime and "--from=project /opt/venv" not in runtime


LOCKS = ROOT / "docker"
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def locked(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a `pip install --require-hashes` file."""
    found: dict[str, tuple[str, list[str]]] = {}
    text = lock.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, *options = line.split()
        name, version = spec.split("==")
        found[canonical(name)] = (version, [o.removeprefix("--hash=") for o in options])
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pip_installs(dockerfile: Path) -> list[str]:
    """Every `pip install` command of a Dockerfile, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return re.findall(r"pip install [^;&\n]*", text)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_each_pip_call_takes_one_index_and_checks_hashes(dockerfile: Path) -> None:
    # Finding 9: `--extra-index-url` let a package of the same name on PyPI win over the
    # PyTorch index's, and nothing checked what PyPI served.
    installs = pip_installs(dockerfile)
    assert installs, dockerfile.name
    for install in installs:
        assert "--extra-index-url" not in install, install
        if "torch==" in install:  # alone, from the wheelhouse or its own index
            assert "--index-url" in install or "--no-index" in install, install
        elif "/dist/" not in install:  # the project's own wheel, built in the same build
            assert "--require-hashes --no-deps -r" in install, install


@pytest.mark.parametrize("name", ["requirements", "models", "locust"])
def test_the_image_locks_pin_every_file_at_the_tested_versions(name: str) -> None:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    constraints = {canonical(n): v for n, v in pins}
    lock = locked(LOCKS / f"{name}.lock")
    assert lock
    for package, (version, hashes) in lock.items():
        # Not in the dev environment's freeze: redis needs async-timeout only below Python
        # 3.11.3 (Debian's, in the local base image), and pip freeze leaves setuptools out.
        unfrozen = package in {"async-timeout", "setuptools"}
        expected = constraints.get(package, version if unfrozen else None)
        assert expected == version, f"{package} {version}: scripts/lock images"
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), package


def test_the_runtime_lock_holds_what_the_service_and_torch_need() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = project["dependencies"] + project["optional-dependencies"]["onnx"]  # ONNX variants
    wanted = {canonical(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in runtime} - {"torch"}
    torch = {"filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec"}
    assert wanted | torch <= locked(LOCKS / "requirements.lock").keys()
    for lock in ("requirements", "models", "locust"):
        packages = locked(LOCKS / f"{lock}.lock")
        assert "torch" not in packages and not {p for p in packages if p.startswith("nvidia")}
