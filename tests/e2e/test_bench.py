"""The benchmark itself must keep working: a tiny run prints a complete table with no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def test_bench_runs_and_reports(model_repo: Path, tmp_path: Path) -> None:
    raw = tmp_path / "bench.json"
    command = [sys.executable, "-m", "loadtests.bench", "--repository", str(model_repo)]
    command += ["--seconds", "1", "--ceiling-seconds", "0.3", "--concurrency", "1", "4"]
    command += ["--batch-sizes", "1", "4", "--only", "off", "--only", "default"]
    command += ["--json", str(raw)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Best ceiling" in completed.stdout
    assert "of ceiling next to it" in completed.stdout
    figures = json.loads(raw.read_text())
    assert all(v > 0 for ceiling in figures["ceilings"].values() for v in ceiling.values())
    points = [p for run in figures["runs"] for p in run["points"]]
    assert len(points) == 4
    assert all(p["errors"] == 0 and p["rps"] > 0 for p in points)
    assert all(p["adjacent_ceiling"] > 0 for p in points)
    off, default = figures["runs"]
    assert all(p["mean_batch"] == 1.0 for p in off["points"])
    assert all(r > 0 for r in default["rss_mb"])
