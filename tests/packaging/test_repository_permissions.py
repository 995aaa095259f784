"""A built model repository is readable by other users (the image's non-root server, say)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_built_versions_are_world_readable(model_repo: Path) -> None:
    for directory in (model_repo / "digits" / "1", model_repo / "minilm" / "1"):
        mode = stat.S_IMODE(directory.stat().st_mode)
        assert mode & 0o005 == 0o005, oct(mode)  # others may list and enter it
        for path in directory.iterdir():
            assert stat.S_IMODE(path.stat().st_mode) & 0o004, path
