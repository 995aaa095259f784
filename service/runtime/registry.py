"""Every model version this worker serves, with its state: loaded, or failed and why.

`sync` converges the served versions to the repository and each model's version policy, at
startup and whenever models are loaded, unloaded or polled. A new version is loaded and warmed
up before it is routed; a version that goes is taken out of routing first, then drained.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch

from service.config import Settings
from service.observability import metrics
from service.runtime.artifact_safety import check_artifact
from service.runtime.device import choose_precision
from service.runtime.errors import DeviceError, ModelLoadError, ModelNotFound, ModelNotReady
from service.runtime.executor import TorchThread
from service.runtime.loading import load_model
from service.runtime.manifest import MANIFEST_FILE, Manifest
from service.runtime.model import BatchPolicy, LoadedModel
from service.runtime.repository import VersionRef, discover, read_verified_manifest
from service.runtime.shared_choice import SharedChoice, SharedRuntimeChoices, choice_key
from service.runtime.trust import TrustPolicy
from service.runtime.version_policy import VersionPolicy

logger = logging.getLogger(__name__)

# An absolute path, of at least two parts: what a client need not learn of the host.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.@+-]+/)+([\w.@+-]+)")


def without_paths(message: str) -> str:
    """`message` with every absolute path cut to its last part."""
    return _ABSOLUTE_PATH.sub(r"\1", message)


@dataclass
class VersionState:
    name: str
    version: int
    path: Path | None = None  # its directory in the repository
    manifest: Manifest | None = None
    model: LoadedModel | None = None
    error: str | None = None
    # The manifest's bytes as loaded: a version rewritten in place is loaded again.
    manifest_digest: str | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None


@dataclass
class ModelEntry:
    name: str
    versions: dict[int, VersionState] = field(default_factory=dict)
    default: int | None = None

    @property
    def default_version(self) -> int:
        if self.default is not None and self.default in self.versions:
            return self.default
        return max(self.versions)


class ModelRegistry:
    def __init__(self, settings: Settings, torch_thread: TorchThread, device: torch.device) -> None:
        self._settings = settings
        self._torch_thread = torch_thread
        self._device = device
        self.entries: dict[str, ModelEntry] = {}
        self.load_error: str | None = None
        self._lock = asyncio.Lock()
        self._trust = TrustPolicy(
            settings.model_trust, settings.model_digests_file, settings.model_trust_key_file
        )

    def available(self) -> dict[str, list[VersionRef]]:
        """What the repository holds now (raises ModelLoadError if it is unusable)."""
        return discover(self._settings.model_repository)

    async def load_all(self) -> None:
        """Startup: the configured models (every model, unless MODELS names some; none in the
        explicit mode unless MODELS names them)."""
        try:
            found = self.available()
        except ModelLoadError as e:
            self.load_error = str(e)
            logger.error("model repository unusable: %s", e)
            return
        explicit = self._settings.model_control == "explicit"
        names = self._settings.models or ([] if explicit else sorted(found))
        missing = [n for n in names if n not in found]
        if missing:
            self.load_error = f"configured model {missing[0]!r} is not in the repository"
            logger.error(self.load_error)
        await self.sync(names, found=found, initial=True)

    async def sync(
        self,
        names: Collection[str],
        *,
        found: dict[str, list[VersionRef]] | None = None,
        initial: bool = False,
    ) -> dict[str, str | None]:
        """Serve exactly `names`, each at the versions its policy selects from the repository.
        Returns each name's load error (None when its default version serves)."""
        async with self._lock:
            found = self.available() if found is None else found
            outcome: dict[str, str | None] = {}
            for name in names:
                entry = self.entries.setdefault(name, ModelEntry(name))
                await self._sync_entry(entry, found.get(name, []), initial=initial)
                outcome[name] = _entry_error(entry)
            for name in [n for n in self.entries if n not in names]:
                await self._retire_all(self.entries.pop(name))
            return outcome

    async def _sync_entry(
        self, entry: ModelEntry, refs: list[VersionRef], *, initial: bool
    ) -> None:
        policy = self._policy(entry.name)
        selected = set(policy.select(ref.version for ref in refs))
        wanted = {ref.version: ref for ref in refs if ref.version in selected}
        retired: list[VersionState] = []
        for version, ref in sorted(wanted.items()):
            current = entry.versions.get(version)
            digest = _manifest_digest(ref)
            if current is not None and current.manifest_digest == digest:
                continue
            state = await self.load_version(ref, digest)
            if state.model is not None:
                state.model.batcher.start()
            if current is not None:
                retired.append(current)
            entry.versions[version] = state  # routed only now, warm
        for version in [v for v in entry.versions if v not in wanted]:
            retired.append(entry.versions.pop(version))
        entry.default = _choose_default(entry, initial=initial)
        for state in retired:
            await self._retire(state)

    def _shared_choice(
        self, ref: VersionRef, digest: str | None, precision: str
    ) -> SharedChoice | None:
        directory = self._settings.runtime_choice_dir
        if directory is None:
            return None
        key = choice_key(ref.name, ref.version, digest, precision)
        return SharedChoice(SharedRuntimeChoices(directory), key)

    def _may_run_code(self) -> bool:
        """Whether a version's native code may load: vouched for from outside the repository,
        or allowed by the operator."""
        return self._settings.model_trust != "none" or self._settings.allow_pickled_artifacts

    def _policy(self, name: str) -> VersionPolicy:
        text = self._settings.overrides_for(name).version_policy
        return VersionPolicy.parse(text or self._settings.model_version_policy)

    async def load_version(self, ref: VersionRef, digest: str | None) -> VersionState:
        """One version, checked, loaded and warmed up; not routed (`sync` routes what it loads)."""
        state = VersionState(ref.name, ref.version, path=ref.path, manifest_digest=digest)
        try:
            # Hashing a large artifact takes a while: off the event loop, which keeps serving
            # the versions already loaded, and off the torch thread, which keeps computing.
            manifest, artifact = await asyncio.to_thread(read_verified_manifest, ref, self._trust)
            state.manifest = manifest
            await asyncio.to_thread(
                check_artifact,
                artifact,
                manifest.format,
                allow_code=self._settings.allow_pickled_artifacts,
            )
            precision = choose_precision(
                self._settings.overrides_for(ref.name).precision or self._settings.precision,
                manifest.precision,
                self._device,
                model=ref.name,
            )
            state.model = await self._torch_thread.run(
                load_model,
                manifest=manifest,
                artifact=artifact,
                device=self._device,
                precision=precision,
                torch_thread=self._torch_thread,
                policy=self._batch_policy(manifest),
                runtime=self._settings.overrides_for(ref.name).runtime or self._settings.runtime,
                may_run_code=self._may_run_code(),
                shared_choice=self._shared_choice(ref, digest, precision.precision),
            )
            metrics.MODEL_READY.labels(ref.name, str(ref.version)).set(1)
        except DeviceError:
            raise
        except Exception as e:
            error = str(e) if isinstance(e, ModelLoadError) else f"{type(e).__name__}: {e}"
            logger.error(
                "model version failed to load",
                extra={"model_name": ref.name, "model_version": ref.version, "error": error},
            )
            # Clients read it in /v1/models and V2 metadata: the log keeps the paths, they don't.
            state.error = without_paths(error)
        return state

    async def _retire(self, state: VersionState) -> None:
        """Out of routing already: let its in-flight requests finish, then stop its batcher."""
        model = state.model
        if model is None:
            return
        drained = await model.wait_idle(timeout=self._settings.max_request_timeout_s)
        await model.batcher.stop()
        metrics.MODEL_READY.labels(state.name, str(state.version)).set(0)
        logger.info(
            "unloaded model version",
            extra={"model_name": state.name, "model_version": state.version, "drained": drained},
        )

    async def _retire_all(self, entry: ModelEntry) -> None:
        states = list(entry.versions.values())
        entry.versions.clear()
        for state in states:
            await self._retire(state)

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
        """Every served model's default version is loaded; with nothing served, only the
        explicit mode is ready (its models come by request)."""
        if self.load_error is not None:
            return False
        if not self.entries:
            return self._settings.model_control == "explicit"
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

    def default_version(self, name: str) -> int | None:
        entry = self.entries.get(name)
        return entry.default_version if entry is not None and entry.versions else None

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


def _choose_default(entry: ModelEntry, *, initial: bool) -> int | None:
    """At startup the highest version, loaded or not: a broken newest version makes the model
    unready rather than silently serving an older one. Later, a version that fails to load
    does not take over: the default stays, or becomes the highest version that serves."""
    if not entry.versions:
        return None
    highest = max(entry.versions)
    if initial or entry.versions[highest].ready:
        return highest
    current = entry.default
    if current is not None and current in entry.versions and entry.versions[current].ready:
        return current
    ready = [v for v, s in entry.versions.items() if s.ready]
    return max(ready) if ready else highest


def _entry_error(entry: ModelEntry) -> str | None:
    if not entry.versions:
        return "no version in the repository matches its version policy"
    state = entry.versions[entry.default_version]
    newest = entry.versions[max(entry.versions)]
    return newest.error or state.error


def _manifest_digest(ref: VersionRef) -> str | None:
    try:
        return hashlib.sha256((ref.path / MANIFEST_FILE).read_bytes()).hexdigest()
    except OSError:
        return None
