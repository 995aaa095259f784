"""scripts/scan (Trivy, offline) fails on what it is there for.

That it passes on the repository is the test command's own `trivy` stage (`scripts/lint
scan`): Trivy runs on the repository once per test run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT

# A scanner in a subprocess: not a unit test's seconds.
pytestmark = pytest.mark.system


def scan(target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ROOT / "scripts" / "scan"), str(target)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_a_root_image_and_a_committed_token_fail_the_scan(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm\nRUN apt-get update\n")
    token = "ghp_" + "Zq4Xw2Lm9Rt6Yp1Nc8Vb3Hs5Kd7Jf0Ga2Te4"  # the shape of a GitHub token
    (tmp_path / "settings.py").write_text(f'GITHUB_TOKEN = "{token}"\n')

    result = scan(tmp_path)

    assert result.returncode == 1
    assert "DS-0002" in result.stdout  # the image runs as root
    assert "github-pat" in result.stdout.lower() or "GitHub Personal Access Token" in result.stdout
