"""Backup retention (scripts/lib/retention.py, run by `scripts/backup prune`) over backups
with faked dates: the newest of each of the last N days and of the last M ISO weeks."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.unit


def make_backups(directory: Path, stamps: list[str]) -> None:
    for stamp in stamps:
        (directory / stamp).mkdir(parents=True)
        (directory / stamp / "manifest.json").write_text("{}")


def prune(directory: Path, daily: int, weekly: int) -> set[str]:
    subprocess.run(
        [str(ROOT / "scripts" / "backup"), "prune"],
        env={**os.environ, "BACKUP_DIR": str(directory), "BACKUP_KEEP_DAILY": str(daily),
             "BACKUP_KEEP_WEEKLY": str(weekly), "TORCHDOCK_ENV_FILE": os.devnull},
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return {p.name for p in directory.iterdir()}


def test_keeps_the_newest_of_each_recent_day_and_week(tmp_path: Path) -> None:
    # Two backups a day (03:00 and 15:00) for 60 days, up to Sunday 2026-11-29.
    last = dt.datetime(2026, 11, 29, 15, 0, tzinfo=dt.UTC)
    stamps = [(last - dt.timedelta(hours=12 * i)).strftime("%Y%m%dT%H%M%SZ") for i in range(120)]
    make_backups(tmp_path, stamps)
    (tmp_path / "20261129T160000Z.partial").mkdir()  # a backup in progress: never touched
    kept = prune(tmp_path, daily=7, weekly=4)
    daily = {f"202611{d:02d}T150000Z" for d in range(23, 30)}  # the last 7 days' newest
    # The newest of the last 4 ISO weeks: weeks 48 (ends 11-29), 47, 46, 45 end on Sundays.
    weekly = {"20261129T150000Z", "20261122T150000Z", "20261115T150000Z", "20261108T150000Z"}
    assert kept == daily | weekly | {"20261129T160000Z.partial"}


def test_pruning_again_changes_nothing(tmp_path: Path) -> None:
    make_backups(tmp_path, ["20261101T000000Z", "20261102T000000Z", "20261120T000000Z"])
    first = prune(tmp_path, daily=2, weekly=1)
    assert first == {"20261102T000000Z", "20261120T000000Z"}
    assert prune(tmp_path, daily=2, weekly=1) == first


def test_an_empty_or_missing_backup_dir_is_fine(tmp_path: Path) -> None:
    assert prune(tmp_path, daily=7, weekly=4) == set()


def test_retention_of_zero_keeps_the_newest_backup(tmp_path: Path) -> None:
    # Once, --daily 0 --weekly 0 deleted every backup, the one just taken too.
    make_backups(tmp_path, ["20261101T000000Z", "20261120T000000Z", "20261121T000000Z"])
    assert prune(tmp_path, daily=0, weekly=0) == {"20261121T000000Z"}


def test_a_negative_retention_is_refused(tmp_path: Path) -> None:
    make_backups(tmp_path, ["20261101T000000Z"])
    with pytest.raises(subprocess.CalledProcessError) as refused:
        prune(tmp_path, daily=-1, weekly=4)
    assert "is not a count" in refused.value.stderr
    assert (tmp_path / "20261101T000000Z").is_dir()
