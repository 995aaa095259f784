"""An append-only spool on local disk for prediction-log rows that Postgres could not take.

Each worker appends to its own `active-<pid>.jsonl`; a background task fsyncs it in batches.
Replay first rotates the active file to `ready-<pid>-<n>.jsonl`, then claims ready files (and
files of workers that died) by renaming them to `replaying-<pid>-...`, so that two workers
never replay the same file. A row is deleted from disk only after Postgres committed it, and
inserts ignore rows already present, so a replay cut short by a crash can simply run again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_ACTIVE = re.compile(r"^active-(\d+)\.jsonl$")
_READY = re.compile(r"^ready-(\d+)-\d+\.jsonl$")
_REPLAYING = re.compile(r"^replaying-(\d+)-.+\.jsonl$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._pid = os.getpid()
        self._active = directory / f"active-{self._pid}.jsonl"
        self._file: IO[bytes] | None = None
        self._dirty = False
        self._sequence = itertools.count()

    def append(self, lines: list[bytes]) -> None:
        """Write rows (one JSON document each) now; `sync()` makes them durable."""
        if self._file is None:
            self._file = self._active.open("ab")
        self._file.write(b"".join(line + b"\n" for line in lines))
        self._file.flush()
        self._dirty = True

    def sync(self) -> None:
        if self._file is not None and self._dirty:
            os.fsync(self._file.fileno())
            self._dirty = False

    def rotate(self) -> None:
        """Close the active file and make it replayable."""
        if self._file is None:
            return
        self.sync()
        self._file.close()
        self._file = None
        ready = self.directory / f"ready-{self._pid}-{next(self._sequence)}.jsonl"
        self._active.rename(ready)
        _fsync_dir(self.directory)

    def claim(self) -> Iterator[Path]:
        """Files this worker may replay now, each renamed to mark it as ours."""
        for path in sorted(self.directory.iterdir()):
            name = path.name
            owner: int | None = None
            for pattern in (_READY, _ACTIVE, _REPLAYING):
                match = pattern.match(name)
                if match:
                    owner = int(match.group(1))
                    break
            if owner is None:
                continue
            if _ACTIVE.match(name) and (owner == self._pid or _alive(owner)):
                continue  # still being written
            if _REPLAYING.match(name) and _alive(owner):
                continue  # a live worker is replaying it
            claimed = self.directory / f"replaying-{self._pid}-{name}"
            with contextlib.suppress(FileNotFoundError):  # another worker was faster
                path.rename(claimed)
                yield claimed

    def pending_bytes(self) -> int:
        total = 0
        for path in self.directory.glob("*.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()
            self._file = None


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of a spool file; a torn last line (a crash mid-write) is dropped."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1]:
        logger.warning("spool file %s ends in a torn line; it was never fsync'd", path.name)
    return [line for line in lines[:-1] if line]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
