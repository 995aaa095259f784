"""The Dockerfiles: the GPU image is built like the CPU one. (hadolint runs in scripts/lint.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
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
    (tests/e2e/test_image.py shows the dependency stage cached across a source change.)"""
    runtime = dockerfile.read_text().split(" AS runtime", 1)[1]
    assert "COPY --from=deps --chown=root:0 /opt/venv /opt/venv" in runtime
    assert "--mount=type=bind,from=project,source=/dist,target=/dist" in runtime
    assert "COPY service" not in runtime and "--from=project /opt/venv" not in runtime
