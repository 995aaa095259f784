"""Monitoring config, checked by the tools that run it: promtool (config, rules, and the rules'
unit tests in monitoring/prometheus/tests/) and amtool, from the local Prometheus and
Alertmanager images. The rules' conventions are static checks, in tests/deploy."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.monitoring_rules import MONITORING
from tests.paths import ROOT
from tests.system.docker_cli import docker

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def tool_images(docker_engine: None) -> None:
    """The Prometheus and Alertmanager images of the local stack, which carry promtool/amtool."""
    subprocess.run([str(ROOT / "scripts" / "base-image"), "--plain", "bookworm"], check=True,
                   capture_output=True)  # fmt: skip
    built = subprocess.run(
        [str(ROOT / "scripts" / "stack"), "--local", "compose", "build", "prometheus",
         "alertmanager"],
        env={**os.environ, "TORCHDOCK_ENV_FILE": os.devnull, "TORCHDOCK_IMAGE": "unused"},
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-3000:]


def run_tool(image: str, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return docker(
        "run", "--rm", "--network", "none",
        "-v", f"{MONITORING / 'prometheus'}:/etc/prometheus:ro",
        "-v", f"{MONITORING / 'alertmanager'}:/etc/alertmanager:ro",
        "--entrypoint", tool, image, *args, check=False,
    )  # fmt: skip


def test_promtool_checks_the_config_and_the_rules(tool_images: None) -> None:
    image = "torchdock-local/prometheus:latest"
    checked = run_tool(image, "promtool", "check", "config", "/etc/prometheus/prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rule files found" in checked.stdout + checked.stderr
    rules = run_tool(image, "promtool", "check", "rules", "/etc/prometheus/rules/alerts.yml",
                     "/etc/prometheus/rules/recording.yml")  # fmt: skip
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_unit_tests_pass(tool_images: None) -> None:
    image = "torchdock-local/prometheus:latest"
    tested = run_tool(image, "promtool", "test", "rules", "/etc/prometheus/tests/rules_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_amtool_checks_the_alertmanager_config(tool_images: None) -> None:
    image = "torchdock-local/alertmanager:latest"
    checked = run_tool(image, "amtool", "check-config", "/etc/alertmanager/alertmanager.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
