"""Backup retention: keep the newest backup of each of the last N days that have one, and of
each of the last M ISO weeks that have one; delete every other complete backup. The newest
backup is always kept, whatever N and M say: retention never leaves no backup at all.

Backups are folders named by their UTC time (20261130T021500Z). Partial folders (a backup that
failed or is still running) are never touched.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import sys
from pathlib import Path

_NAME = re.compile(r"^\d{8}T\d{6}Z$")


def to_keep(stamps: list[dt.datetime], daily: int, weekly: int) -> set[dt.datetime]:
    newest_first = sorted(stamps, reverse=True)
    keep: set[dt.datetime] = set(newest_first[:1])
    days: list[dt.date] = []
    weeks: list[tuple[int, int]] = []
    for stamp in newest_first:
        day = stamp.date()
        if day not in days and len(days) < daily:
            days.append(day)
            keep.add(stamp)
        week = stamp.isocalendar()[:2]
        if week not in weeks and len(weeks) < weekly:
            weeks.append(week)
            keep.add(stamp)
    return keep


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not a count (0 or more)")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backup_dir", type=Path)
    parser.add_argument("--daily", type=_count, required=True)
    parser.add_argument("--weekly", type=_count, required=True)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if not args.backup_dir.is_dir():
        return 0
    found = {
        dt.datetime.strptime(p.name, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC): p
        for p in args.backup_dir.iterdir()
        if p.is_dir() and _NAME.match(p.name)
    }
    keep = to_keep(list(found), args.daily, args.weekly)
    for stamp, path in sorted(found.items()):
        if stamp in keep:
            continue
        print(f"retention: removing {path.name}", file=sys.stderr)
        if not args.dry_run:
            shutil.rmtree(path)
    print(f"retention: kept {len(keep)} of {len(found)} backups", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
