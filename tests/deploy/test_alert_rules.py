"""Every alert follows the rules' conventions, is unit-tested both ways, and its runbook_url leads
to its own section; the dashboard reads the recording rules."""

from __future__ import annotations

import json
import re

import pytest

from tests.monitoring_rules import MONITORING, alerts, load, recording_rules
from tests.paths import ROOT

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


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = load(MONITORING / "prometheus" / "tests" / "rules_test.yml")["tests"]
    fires, stays_quiet = set(), set()
    for case in cases:
        for check in case.get("alert_rule_test", []):
            (fires if check["exp_alerts"] else stays_quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - stays_quiet == set(), "alerts never tested staying quiet"


def test_the_dashboard_reads_recording_rules() -> None:
    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "torchdock-overview.json")
                           .read_text())  # fmt: skip
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    recorded = recording_rules()
    using_rules = [e for e in expressions if any(r in e for r in recorded)]
    # The rest are raw gauges that need no rule: replicas up, queue depth, and cAdvisor's.
    raw = [e for e in expressions if e not in using_rules]
    assert len(using_rules) >= 12
    assert all(re.search(r"\b(up|torchdock_queue_depth|container_\w+)\{", e) for e in raw), raw
    provisioned = load(MONITORING / "grafana" / "provisioning" / "dashboards" / "torchdock.yml")
    assert provisioned["providers"][0]["options"]["path"] == "/var/lib/grafana-dashboards"
