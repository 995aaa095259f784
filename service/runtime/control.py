"""The explicitly loaded models, shared by the gunicorn workers of one server through a directory.

A load or unload request reaches one worker. It changes `models.json` (under a file lock, with
a new generation), and every worker, itself included, applies that generation and writes an
acknowledgement; the request answers once every live worker has. The directory is this
server's alone (`torchdock serve` makes it): replicas converge through the repository instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from service.processes import pid_alive
from service.runtime.worker_files import exclusive_lock, write_atomically

STATE_FILE = "models.json"


@dataclass(frozen=True)
class ControlState:
    generation: int
    models: tuple[str, ...]


@dataclass(frozen=True)
class Acknowledgement:
    pid: int
    generation: int
    errors: dict[str, str]


class SharedModelControl:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._workers = directory / "workers"
        self._workers.mkdir(parents=True, exist_ok=True, mode=0o700)

    def initialise(self, models: list[str]) -> ControlState:
        """The state as the first worker to start finds it: MODELS, at generation 0."""
        with self._locked():
            current = self._read()
            if current is None:
                current = ControlState(0, tuple(models))
                self._write(current)
            return current

    def read(self) -> ControlState:
        return self._read() or ControlState(0, ())

    def update(self, change: Callable[[set[str]], set[str]]) -> ControlState:
        with self._locked():
            current = self.read()
            new = ControlState(current.generation + 1, tuple(sorted(change(set(current.models)))))
            self._write(new)
            return new

    def acknowledge(self, generation: int, errors: dict[str, str]) -> None:
        body = {"generation": generation, "errors": errors}
        write_atomically(self._workers / f"{os.getpid()}.json", json.dumps(body))

    def acknowledgements(self) -> list[Acknowledgement]:
        """Those of live workers; a dead worker's file is removed."""
        found = []
        for path in self._workers.glob("*.json"):
            pid = int(path.stem)
            if not pid_alive(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                raw = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being replaced: read again on the next round
            found.append(Acknowledgement(pid, int(raw["generation"]), dict(raw["errors"])))
        return found

    async def wait_for_workers(self, generation: int, *, timeout: float) -> dict[str, str]:
        """Every live worker's load errors, once all have applied `generation`; TimeoutError
        when one has not in time."""
        deadline = time.monotonic() + timeout
        while True:
            acks = self.acknowledgements()
            if acks and all(a.generation >= generation for a in acks):
                return {name: e for a in acks for name, e in a.errors.items()}
            if time.monotonic() > deadline:
                behind = sorted(a.pid for a in acks if a.generation < generation)
                raise TimeoutError(f"workers {behind} did not apply generation {generation}")
            await asyncio.sleep(0.05)

    def _read(self) -> ControlState | None:
        try:
            raw = json.loads((self.directory / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return ControlState(int(raw["generation"]), tuple(raw["models"]))

    def _write(self, state: ControlState) -> None:
        body = json.dumps({"generation": state.generation, "models": list(state.models)})
        write_atomically(self.directory / STATE_FILE, body)

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return exclusive_lock(self.directory / "lock")
