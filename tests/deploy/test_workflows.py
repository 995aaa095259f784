"""The GitHub workflows' hygiene, checked statically (they cannot run here; `scripts/lint
workflows` also validates them against GitHub's schema and audits them with zizmor)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.paths import ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
pytestmark = pytest.mark.deploy


def load(path: Path) -> dict[Any, Any]:
    doc: dict[Any, Any] = yaml.safe_load(path.read_text())
    return doc


def steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_there_are_workflows() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version(path: Path) -> None:
    lines = [line for line in path.read_text().splitlines() if re.match(r"\s*-?\s*uses:", line)]
    assert lines
    for line in lines:
        assert re.search(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+(\.\d+)*$", line), line


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege_and_bounded_jobs(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        assert job["timeout-minutes"] <= 90, name
    for step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_no_expression_is_interpolated_into_a_shell(path: Path) -> None:
    # Values reach `run:` through `env:`, never as ${{ }} inside the script.
    for step in steps(load(path)):
        assert "${{" not in step.get("run", ""), step.get("name")


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_script_a_workflow_calls_exists_and_is_executable(path: Path) -> None:
    called = {
        match
        for step in steps(load(path))
        for match in re.findall(r"\./(scripts/[\w.-]+)", step.get("run", ""))
    }
    for script in called:
        assert os.access(ROOT / script, os.X_OK), script
    if path.name == "ci.yml":
        assert called >= {"scripts/bootstrap", "scripts/lint", "scripts/test"}


def test_the_deploy_job_waits_for_approval_and_uses_the_deploy_script() -> None:
    job = load(ROOT / ".github" / "workflows" / "release.yml")["jobs"]["deploy"]
    assert job["environment"] == "production"  # its required reviewers approve each deploy
    assert job["needs"] == "github-release"
    assert job["permissions"] == {"contents": "read"}
    runs = " ".join(step.get("run", "") for step in job["steps"])
    assert "scripts/deploy" in runs and "BatchMode=yes" in runs
    assert os.access(ROOT / "scripts" / "deploy", os.X_OK)
