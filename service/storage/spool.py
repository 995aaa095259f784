"""An append-only spool on local disk for prediction-log rows that Postgres could not take.

Each worker appends to its own `active-<owner>.jsonl` and holds an exclusive `flock` on it for
as long as it writes it. A background task fsyncs it in batches; at `file_bytes` the file is
rotated to `ready-<owner>-<n>.jsonl`, so that an outage leaves many small files, not one huge
one. Replay claims a file by locking it and renaming it to `replaying-<owner>-...`; a file
whose lock is free belongs to nobody alive. Because a lock, not a PID, says who is alive, the
directory can be shared by every replica that mounts it (containers have PID namespaces of their
own): the survivors replay what a removed replica left. A file is deleted only after Postgres
committed its rows, and inserts ignore rows already present, so a replay cut short by a crash
can simply run again.

The spool is bounded: past `max_bytes` in the whole directory, `append` refuses rows (the log
counts them as lost, loudly) instead of filling the disk under every other writer.

Whoever can write the directory can add rows to the log, so only regular files owned by this
user are ever replayed, nothing is opened through a symlink, and a directory of this user's
that others may write is made private at start.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_SPOOL_NAME = re.compile(r"^(active|ready|replaying)-.+\.jsonl$")
# A claimed file keeps the name it had before anyone replayed it.
_REPLAYING = re.compile(r"^replaying-[^-]+-(?P<original>.+)$")
FILE_BYTES = 16 * 1024 * 1024
MAX_BYTES = 1024 * 1024 * 1024
_OPEN_TRIES = 100


class SpoolFull(OSError):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(errno.ENOSPC, f"the spool holds its limit of {max_bytes} bytes")


class Spool:
    def __init__(
        self, directory: Path, *, max_bytes: int = MAX_BYTES, file_bytes: int = FILE_BYTES
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        _make_private(directory)
        self.owner = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._active = directory / f"active-{self.owner}.jsonl"
        self._max_bytes = max_bytes
        self._file_bytes = file_bytes
        self._file: IO[bytes] | None = None
        self._written = 0  # bytes in the active file
        self._dirty = False
        self._sequence = itertools.count()
        # append() runs on the event loop, sync() in a thread: one lock orders them.
        self._lock = threading.Lock()
        # The directory's size at the last count, plus what this worker appended since:
        # other replicas' writes show up at the next count (every replay round).
        self._known_bytes = 0
        self.pending_bytes()

    def append(self, lines: list[bytes]) -> None:
        """Write rows (one JSON document each) now; `sync()` makes them durable."""
        data = b"".join(line + b"\n" for line in lines)
        with self._lock:
            if self._known_bytes + len(data) > self._max_bytes:
                raise SpoolFull(self._max_bytes)
            if self._file is None:
                self._file = _open_locked(self._active)
                self._written = 0
            self._file.write(data)
            self._file.flush()
            self._dirty = True
            self._written += len(data)
            self._known_bytes += len(data)
            if self._written >= self._file_bytes:
                self._rotate_locked()

    def sync(self) -> None:
        with self._lock:
            if self._file is not None and self._dirty:
                self._dirty = False
                os.fsync(self._file.fileno())

    def rotate(self) -> None:
        """Close the active file and make it replayable."""
        with self._lock:
            self._rotate_locked()

    def _rotate_locked(self) -> None:
        if self._file is None:
            return
        os.fsync(self._file.fileno())
        self._dirty = False
        # Renamed while still locked, so that no replayer claims it as a dead worker's.
        self._active.rename(self.directory / f"ready-{self.owner}-{next(self._sequence)}.jsonl")
        self._file.close()
        self._file = None
        _fsync_dir(self.directory)

    def claim(self) -> Generator[Path]:
        """The files nobody alive holds, each locked and renamed to mark it as this worker's.

        A file stays locked until the iterator moves past it (or is closed), by when its
        replay has deleted it or given up on it: then it waits for the next round.
        """
        for path in sorted(self.directory.iterdir()):
            if path == self._active or not _SPOOL_NAME.match(path.name):
                continue
            if not _is_own_file(path):
                logger.error("spool: %s is not a regular file of this user; skipped", path.name)
                continue
            lock = _try_lock(path)
            if lock is None:
                continue  # a live worker writes or replays it
            with lock:
                match = _REPLAYING.match(path.name)
                original = match["original"] if match else path.name
                claimed = self.directory / f"replaying-{self.owner}-{original}"
                if claimed != path:
                    path.rename(claimed)
                yield claimed

    def pending_bytes(self) -> int:
        total = 0
        for path in self.directory.glob("*.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        with self._lock:
            self._known_bytes = total
        return total

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None


def iter_batches(path: Path, size: int) -> Iterator[list[bytes]]:
    """The complete lines of a spool file, `size` at a time, without reading it whole.

    A torn last line (a crash mid-write: it was never fsync'd) is dropped."""
    batch: list[bytes] = []
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                logger.warning("spool file %s ends in a torn line; it was never fsync'd", path.name)
                break
            if line := line.rstrip(b"\n"):
                batch.append(line)
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def open_append(path: Path) -> IO[bytes]:
    """`path` for appending, created private; never through a symlink (ELOOP instead)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.fdopen(os.open(path, flags, 0o600), "ab")


def _open_locked(path: Path) -> IO[bytes]:
    """`path` for appending, locked by this process, and still the file named `path`.

    Between creating a file and locking it, a replayer may take it for a dead worker's (its
    lock is free) and claim it; writing on would put rows in a file being deleted. So check
    that the name still points at the locked file, and start a new one when it does not."""
    for _ in range(_OPEN_TRIES):
        f = open_append(path)
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a replayer holds it, and renames it away in a moment
            f.close()
            time.sleep(0.001)
            continue
        if _still_named(path, f):
            return f
        f.close()
    raise OSError(errno.EBUSY, f"could not take {path.name} for writing")


def _try_lock(path: Path) -> IO[bytes] | None:
    """The file, locked, if no live process holds it and `path` still names it."""
    try:
        f = open(path, "rb", opener=_open_nofollow)  # noqa: SIM115 (returned, or closed below)
    except OSError:
        return None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another worker may have claimed and renamed (or replayed and deleted) it between
        # our listing and our lock; then the name is gone or is another file.
        if _still_named(path, f):
            return f
    except BlockingIOError:
        pass
    f.close()
    return None


def _still_named(path: Path, f: IO[bytes]) -> bool:
    """Whether `path` still names the file `f` has open (not gone, nor another file)."""
    try:
        return os.stat(path, follow_symlinks=False).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


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
