"""RUNTIME=auto decided once per server, not once per worker.

Every worker of a server loads the same versions at the same time. Timed by each worker alone,
the runtimes were timed while the siblings loaded too, and where two were within a few percent
(compiled and ONNX minilm fp32 on an AMD EPYC, Zen 4) two processes chose differently. So the
first worker to load a version times the runtimes while holding a lock that its siblings wait
on, and records the winner in a directory that `torchdock serve` makes for its workers; the
others serve what it recorded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from service.runtime.compiled import Runtime, RuntimeChoice
from service.runtime.worker_files import exclusive_lock, write_atomically


def choice_key(name: str, version: int, manifest_digest: str | None, precision: str) -> str:
    """A file name for one version's choice: a new manifest or precision is a new decision."""
    identity = f"{name}\0{version}\0{manifest_digest}\0{precision}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


class SharedRuntimeChoices:
    """The runtime each version serves, as the first of a server's workers timed it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def decide(self, key: str) -> Iterator[RuntimeChoice | None]:
        """Hold `key`'s lock; what a sibling recorded for it, or None for the caller to time
        and `record` while it still holds the lock."""
        with exclusive_lock(self.directory / f"{key}.lock"):
            yield self._read(key)

    def record(self, key: str, choice: RuntimeChoice) -> None:
        body = json.dumps({"runtime": choice.runtime, "reason": choice.reason})
        write_atomically(self.directory / f"{key}.json", body)

    def _read(self, key: str) -> RuntimeChoice | None:
        try:
            raw = json.loads((self.directory / f"{key}.json").read_text())
        except (FileNotFoundError, ValueError):  # none yet, or a file this code did not write
            return None
        runtime: Runtime = raw.get("runtime")
        if runtime not in get_args(Runtime):
            return None
        return RuntimeChoice(runtime, str(raw.get("reason", "")))


@dataclass(frozen=True)
class SharedChoice:
    """Where one version's choice is shared: its server's choices, and its key there."""

    choices: SharedRuntimeChoices
    key: str
