"""The monitoring rules as data, for the tests that check them and the ones that query them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.paths import MONITORING

RULES = MONITORING / "prometheus" / "rules"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alerts() -> list[dict[str, Any]]:
    doc = load(RULES / "alerts.yml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def recording_rules() -> list[str]:
    doc = load(RULES / "recording.yml")
    return sorted({r["record"] for g in doc["groups"] for r in g["rules"]})
