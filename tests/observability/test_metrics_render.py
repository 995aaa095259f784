"""/metrics in multiprocess mode, while a worker is starting."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from service.observability.metrics import render_latest

pytestmark = pytest.mark.unit


def test_a_worker_file_not_yet_sized_does_not_fail_the_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    live = MmapedDict(str(tmp_path / "counter_101.db"))
    key = mmap_key("demo_total", "demo_total", [], [], "A demo counter.")
    live.write_value(key, 7.0, 0.0)
    live.close()
    # What a worker leaves for a moment at start: the file exists, not yet sized.
    (tmp_path / "counter_102.db").touch()

    body, _ = render_latest()

    assert b"demo_total 7.0" in body
