"""The Docker engine, shared by every docker-marked test of a session."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.paths import ROOT


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    engine = ROOT / "scripts" / "docker-engine"
    for step in ("start", "reclaim"):
        done = subprocess.run([str(engine), step], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
    yield
    # What the builds of this session left behind goes, so that runs do not add up.
    subprocess.run([str(engine), "reclaim"], capture_output=True, check=False)
    # Stops the engine only if the script started it (it keeps the PID).
    subprocess.run([str(engine), "stop"], capture_output=True, check=False)


@pytest.fixture(scope="session")
def registry(docker_engine: None) -> Iterator[str]:
    """A real registry on 127.0.0.1 (scripts/registry): its address, to push to and pull from."""
    script = str(ROOT / "scripts" / "registry")
    started = subprocess.run([script, "start"], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    yield started.stdout.strip()
    subprocess.run([script, "stop"], capture_output=True, check=False)
