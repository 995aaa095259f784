"""scripts/README.md's table names every script there is, and no script that is gone."""

from __future__ import annotations

import re

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.deploy


def test_the_scripts_table_names_every_script_and_no_other() -> None:
    scripts = ROOT / "scripts"
    present = {p.name for p in scripts.iterdir() if p.is_file() and p.stat().st_mode & 0o111}
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", (scripts / "README.md").read_text(), re.M))
    assert present, "no executable script found"
    assert listed == present, f"unlisted: {present - listed}, gone: {listed - present}"
