"""The configuration reference and the Settings class say the same; the README stays a page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.config import Settings

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
# Read by libraries themselves, not by Settings; documented beside the settings.
LIBRARY_VARIABLES = {"PROMETHEUS_MULTIPROC_DIR", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}


def documented_names() -> set[str]:
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}


def test_every_setting_is_documented_and_nothing_else_is() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    documented = documented_names()
    assert fields - documented == set(), "settings missing from docs/configuration.md"
    assert documented - fields - LIBRARY_VARIABLES == set(), "documented, but not a setting"


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
