"""MODEL_CONTROL: which models this worker serves after startup, and who decides.

- none: what was loaded at startup stays.
- poll: the repository is rescanned every MODEL_POLL_S; new versions load, removed ones go.
- explicit: the repository API loads and unloads, for every worker of the server at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.config import Settings
from service.periodic import PeriodicTask
from service.runtime.control import SharedModelControl
from service.runtime.errors import (
    ModelControlDisabled,
    ModelLoadError,
    ModelLoadFailed,
    ModelNotFound,
)
from service.runtime.registry import ModelRegistry

logger = logging.getLogger(__name__)

# How often a worker looks for a generation that another worker wrote.
EXPLICIT_CHECK_S = 0.2


class ModelController:
    def __init__(self, settings: Settings, registry: ModelRegistry, control_dir: Path) -> None:
        self._settings = settings
        self._registry = registry
        self._shared = SharedModelControl(control_dir) if self.mode == "explicit" else None
        self._applied = -1
        interval = EXPLICIT_CHECK_S if self._shared is not None else settings.model_poll_s
        self._rounds = PeriodicTask(f"model-control:{self.mode}", interval, self._round)

    @property
    def mode(self) -> str:
        return self._settings.model_control

    async def start(self) -> None:
        if self._shared is not None:
            # A worker that starts late (a restart, say) catches up with what was loaded.
            state = self._shared.initialise(list(self._settings.models))
            errors = await self._registry.sync(state.models) if state.generation else {}
            self._acknowledge(state.generation, errors)
        if self.mode != "none":
            self._rounds.start()

    async def stop(self) -> None:
        await self._rounds.stop()

    async def _round(self) -> None:
        try:
            await self.apply()
        except ModelLoadError as e:  # the repository went away: keep what serves
            logger.error("model control: %s", e)

    async def apply(self) -> None:
        """One round: the shared state's models (explicit), or the repository's (poll)."""
        if self._shared is not None:
            state = self._shared.read()
            if state.generation != self._applied:
                self._acknowledge(state.generation, await self._registry.sync(state.models))
        else:
            found = self._registry.available()
            names = self._settings.models or sorted(found)
            await self._registry.sync(names, found=found)

    def _acknowledge(self, generation: int, errors: dict[str, str | None]) -> None:
        assert self._shared is not None
        self._applied = generation
        self._shared.acknowledge(generation, {n: e for n, e in errors.items() if e})

    async def load(self, name: str) -> None:
        """Load (or reload) `name` on every worker; returns once all serve it."""
        shared = self._explicit()
        if name not in self._registry.available():
            raise ModelNotFound(f"model {name!r} is not in the repository")
        errors = await self._change(shared, lambda models: models | {name})
        if name in errors:
            raise ModelLoadFailed(f"failed to load {name!r}: {errors[name]}")

    async def unload(self, name: str) -> None:
        shared = self._explicit()
        if name not in shared.read().models:
            raise ModelNotFound(f"model {name!r} is not loaded")
        await self._change(shared, lambda models: models - {name})

    async def _change(
        self, shared: SharedModelControl, change: Callable[[set[str]], set[str]]
    ) -> dict[str, str]:
        state = shared.update(change)
        await self.apply()  # this worker at once; the others within EXPLICIT_CHECK_S
        try:
            return await shared.wait_for_workers(
                state.generation, timeout=self._settings.max_request_timeout_s
            )
        except TimeoutError as e:
            raise ModelLoadFailed(str(e)) from e

    def _explicit(self) -> SharedModelControl:
        if self._shared is None:
            raise ModelControlDisabled(
                f"MODEL_CONTROL={self.mode}: models are loaded and unloaded by"
                f" {'the repository poll' if self.mode == 'poll' else 'restarting'};"
                " set MODEL_CONTROL=explicit to use this API"
            )
        return self._shared

    def index(self, *, ready_only: bool) -> list[dict[str, Any]]:
        """Triton's repository index: every model version in the repository, and its state."""
        served = self._registry.entries
        rows: list[dict[str, Any]] = []
        for name, refs in sorted(self._registry.available().items()):
            entry = served.get(name)
            for ref in refs:
                state = entry.versions.get(ref.version) if entry else None
                row: dict[str, Any] = {"name": name, "version": str(ref.version)}
                if state is not None and state.ready:
                    row["state"] = "READY"
                else:
                    row["state"] = "UNAVAILABLE"
                    row["reason"] = state.error if state is not None else "unloaded"
                if row["state"] == "READY" or not ready_only:
                    rows.append(row)
        return rows
