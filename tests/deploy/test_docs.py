"""The configuration reference and the Settings class say the same; the README stays a page."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest

from service.config import Settings
from tests.paths import ROOT

pytestmark = pytest.mark.deploy

# Read by libraries themselves, not by Settings; documented beside the settings by hand.
LIBRARY_VARIABLES = {
    "PROMETHEUS_MULTIPROC_DIR",
    "ONEDNN_PRIMITIVE_CACHE_CAPACITY",
    "LRU_CACHE_CAPACITY",
}


def _docs_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "scripts/lib/docs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered_names(markdown: str) -> list[str]:
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    return [re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])[0] for row in rows]


def test_the_configuration_page_renders_every_setting_once() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page.count(_docs_hooks().MARKER) == 1
    rendered = _docs_hooks().on_page_markdown(page)
    names = rendered_names(rendered)
    assert len(names) == len(set(names))
    assert set(names) == {n.upper() for n in Settings.model_fields} | LIBRARY_VARIABLES
    assert set(rendered_names(page)) == LIBRARY_VARIABLES, "settings rows are rendered, not typed"


def test_every_setting_has_a_docstring_and_a_shown_default() -> None:
    hooks = _docs_hooks()
    for name, field in Settings.model_fields.items():
        assert field.description and len(field.description) > 10, name
    table = hooks.settings_table()
    assert "| `KEEPALIVE_S` | `5` |" in table
    assert "| `DATABASE_URL` | unset |" in table
    assert "| `DB_AUTO_UPGRADE` | `true` |" in table


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150
