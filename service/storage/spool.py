"""An append-only spool on local disk for prediction-log rows that Postgres could not take.

Each worker appends to its own `active-<owner>.jsonl`, where the owner is `<pid>.<boot id>`
(a PID can be reused by a later process on the same volume; the boot id cannot). A background
task fsyncs it in batches. Replay first rotates the active file to `ready-<owner>-<n>.jsonl`,
then claims ready files (and files of workers that died) by renaming them to
`replaying-<owner>-...`, so that two live workers never replay the same file. A file is deleted
only after Postgres committed its rows, and inserts ignore rows already present, so a replay cut
short by a crash can simply run again.

Whoever can write the directory can add rows to the log, so only regular files owned by this
user are ever replayed, nothing is opened through a symlink, and a directory of this user's
that others may write is made private at start.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from service.processes import pid_alive

logger = logging.getLogger(__name__)

_OWNER = r"(\d+)\.([0-9a-f]+)"
_ACTIVE = re.compile(rf"^active-{_OWNER}\.jsonl$")
_READY = re.compile(rf"^ready-{_OWNER}-\d+\.jsonl$")
_REPLAYING = re.compile(rf"^replaying-{_OWNER}-.+\.jsonl$")
_SPOOL_NAME = re.compile(r"^(active|ready|replaying)-.+\.jsonl$")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_private(directory)
        self._pid = os.getpid()
        self._boot = secrets.token_hex(4)
        self.owner = f"{self._pid}.{self._boot}"
        self._active = directory / f"active-{self.owner}.jsonl"
        self._file: IO[bytes] | None = None
        self._dirty = False
        self._sequence = itertools.count()
        # append() runs on the event loop, sync() in a thread: one lock orders them.
        self._lock = threading.Lock()

    def _is_mine(self, pid: int, boot: str) -> bool:
        return pid == self._pid and boot == self._boot

    def _owner_alive(self, pid: int, boot: str) -> bool:
        if pid == self._pid:
            return boot == self._boot  # same PID, other boot id: a dead earlier process
        return pid_alive(pid)

    def append(self, lines: list[bytes]) -> None:
        """Write rows (one JSON document each) now; `sync()` makes them durable."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if self._file is None:
                self._file = open_append(self._active)
            self._file.write(data)
            self._file.flush()
            self._dirty = True

    def sync(self) -> None:
        with self._lock:
            if self._file is not None and self._dirty:
                self._dirty = False
                os.fsync(self._file.fileno())

    def rotate(self) -> None:
        """Close the active file and make it replayable."""
        with self._lock:
            if self._file is None:
                return
            os.fsync(self._file.fileno())
            self._dirty = False
            self._file.close()
            self._file = None
            ready = self.directory / f"ready-{self.owner}-{next(self._sequence)}.jsonl"
            self._active.rename(ready)
        _fsync_dir(self.directory)

    def claim(self) -> Iterator[Path]:
        """Files this worker may replay now, each renamed to mark it as ours."""
        for path in sorted(self.directory.iterdir()):
            name = path.name
            if not _is_own_file(path):
                if _SPOOL_NAME.match(name):
                    logger.error("spool: %s is not a regular file of this user; not replayed", name)
                continue
            if (match := _REPLAYING.match(name)) is not None:
                pid, boot = int(match.group(1)), match.group(2)
                if self._is_mine(pid, boot):
                    yield path  # a replay of ours that failed earlier: retry it as it is
                    continue
                if self._owner_alive(pid, boot):
                    continue  # a live worker is replaying it
            elif (match := _ACTIVE.match(name)) is not None:
                if self._owner_alive(int(match.group(1)), match.group(2)):
                    continue  # still being written
            elif _READY.match(name) is None:
                continue
            claimed = self.directory / f"replaying-{self.owner}-{name}"
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
        with self._lock:
            if self._file is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def read_lines(path: Path) -> list[bytes]:
    """The complete lines of a spool file; a torn last line (a crash mid-write) is dropped."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1]:
        logger.warning("spool file %s ends in a torn line; it was never fsync'd", path.name)
    return [line for line in lines[:-1] if line]


def open_append(path: Path) -> IO[bytes]:
    """`path` for appending, created private; never through a symlink (ELOOP instead)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "ab")


def _is_own_file(path: Path) -> bool:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()


def _make_private(directory: Path) -> None:
    info = directory.stat()
    loose = info.st_mode & 0o077
    if info.st_uid == os.geteuid():
        if loose:
            directory.chmod(0o700)
            logger.warning("spool: %s was open to others (mode %o); now 0700", directory, loose)
    elif info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        # Files planted there are not replayed, but others could delete this worker's.
        logger.warning(
            "spool: %s belongs to uid %d and anyone may write it; mount a volume of this user's",
            directory,
            info.st_uid,
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
