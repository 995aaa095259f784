"""Every alert follows the rules' conventions, and its runbook_url leads to its own section."""

from __future__ import annotations

import re

import pytest

from tests.system.docker_cli import ROOT
from tests.system.monitoring_rules import alerts

pytestmark = pytest.mark.deploy


def test_every_alert_has_a_window_a_severity_its_annotations_and_a_runbook() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", runbook, re.M))
    for rule in alerts():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), name
        page, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / page).is_file(), name
        assert anchor == name.lower(), f"{name}'s runbook_url points at #{anchor}"
        assert name in headings, f"docs/runbook.md has no section for {name}"
    assert headings == {rule["alert"] for rule in alerts()}, "a runbook section without its alert"
