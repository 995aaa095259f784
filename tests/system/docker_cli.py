"""The Docker CLI for docker-marked tests: Debian's client (it has BuildKit) where present."""

from __future__ import annotations

import subprocess
from pathlib import Path

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def docker(
    *args: str, check: bool = True, timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, check=False, timeout=timeout,
        input=input_text,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result
