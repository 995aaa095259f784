"""Every model version this worker serves, with its state: loaded, or failed and why."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from service.config import Settings
from service.observability import metrics
from service.runtime.artifact_safety import check_artifact
from service.runtime.device import choose_precision
from service.runtime.errors import DeviceError, ModelLoadError, ModelNotFound, ModelNotReady
from service.runtime.executor import TorchThread
from service.runtime.manifest import Manifest
from service.runtime.model import BatchPolicy, LoadedModel, load_model
from service.runtime.repository import VersionRef, discover, read_verified_manifest

logger = logging.getLogger(__name__)


@dataclass
class VersionState:
    name: str
    version: int
    manifest: Manifest | None = None
    model: LoadedModel | None = None
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)

    @property
    def default_version(self) -> int:
        """The highest version present, loaded or not: never silently fall back to an older one."""
        return max(self.versions)


class ModelRegistry:
    def __init__(self, settings: Settings, torch_thread: TorchThread, device: torch.device) -> None:
        self._settings = settings
        self._torch_thread = torch_thread
        self._device = device
        self.entries: dict[str, ModelEntry] = {}
        self.load_error: str | None = None

    async def load_all(self) -> None:
        try:
            found = discover(self._settings.model_repository)
        except ModelLoadError as e:
            self.load_error = str(e)
            logger.error("model repository unusable: %s", e)
            return
        wanted = self._settings.models or sorted(found)
        for name in wanted:
            entry = self.entries.setdefault(name, ModelEntry(name))
            refs = found.get(name, [])
            if not refs:
                self.load_error = f"configured model {name!r} is not in the repository"
                logger.error(self.load_error)
                continue
            for ref in refs:
                entry.versions[ref.version] = await self._load_version(ref)
        for entry in self.entries.values():
            for state in entry.versions.values():
                if state.model is not None:
                    state.model.batcher.start()

    async def _load_version(self, ref: VersionRef) -> VersionState:
        state = VersionState(ref.name, ref.version)
        try:
            manifest, artifact = read_verified_manifest(ref)
            state.manifest = manifest
            check_artifact(
                artifact, manifest.format, allow_code=self._settings.allow_pickled_artifacts
            )
            state.model = await self._torch_thread.run(
                load_model,
                manifest=manifest,
                artifact=artifact,
                device=self._device,
                precision=choose_precision(
                    self._settings.overrides_for(ref.name).precision or self._settings.precision,
                    manifest.precision,
                    self._device,
                    model=ref.name,
                ),
                torch_thread=self._torch_thread,
                policy=self._batch_policy(manifest),
            )
            metrics.MODEL_READY.labels(ref.name, str(ref.version)).set(1)
        except DeviceError:
            raise
        except Exception as e:
            state.error = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            logger.error(
                "model version failed to load",
                extra={"model_name": ref.name, "model_version": ref.version, "error": state.error},
            )
        return state

    def _batch_policy(self, manifest: Manifest) -> BatchPolicy:
        overrides = self._settings.overrides_for(manifest.name)
        delay_ms = overrides.max_batch_delay_ms
        if delay_ms is None:
            delay_ms = manifest.max_batch_delay_ms
        if delay_ms is None:
            delay_ms = self._settings.max_batch_delay_ms
        return BatchPolicy(
            enabled=overrides.batching if overrides.batching is not None else True,
            max_batch_size=overrides.max_batch_size or manifest.max_batch_size,
            max_delay_s=delay_ms / 1000.0,
            max_queue_items=self._settings.max_queue_size,
        )

    @property
    def ready(self) -> bool:
        """Every configured model serves its default version, and there is at least one."""
        if self.load_error is not None or not self.entries:
            return False
        return all(
            e.versions and e.versions[e.default_version].ready for e in self.entries.values()
        )

    def state(self, name: str, version: int | None = None) -> VersionState:
        entry = self.entries.get(name)
        if entry is None or not entry.versions:
            raise ModelNotFound(f"model {name!r} is not served here")
        chosen = entry.default_version if version is None else version
        state = entry.versions.get(chosen)
        if state is None:
            raise ModelNotFound(f"model {name!r} has no version {chosen}")
        return state

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        state = self.state(name, version)
        if state.model is None:
            raise ModelNotReady(
                f"model {name!r} version {state.version} is not loaded: {state.error}"
            )
        return state.model

    async def stop(self) -> None:
        for entry in self.entries.values():
            for state in entry.versions.values():
                if state.model is not None:
                    await state.model.batcher.stop()
                    metrics.MODEL_READY.labels(state.name, str(state.version)).set(0)
