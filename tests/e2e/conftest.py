"""The Docker engine, shared by every docker-marked test of a session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.docker_cli import ROOT


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    engine = ROOT / "scripts" / "docker-engine"
    started = subprocess.run([str(engine), "start"], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    yield
    # Stops the engine only if the script started it (it keeps the PID).
    subprocess.run([str(engine), "stop"], capture_output=True, check=False)
