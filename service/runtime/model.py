"""One loaded model version: its artifact on a device, its handler, and its batcher."""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.config import RuntimeSetting
from service.observability import metrics
from service.runtime.batcher import DynamicBatcher
from service.runtime.compiled import RuntimeChoice, load_compiled, median_seconds, usable_variant
from service.runtime.device import DTYPES, PrecisionChoice
from service.runtime.errors import ModelLoadError
from service.runtime.executor import TorchThread
from service.runtime.handlers import handler_for
from service.runtime.handlers.base import ModelHandler, Prepared
from service.runtime.manifest import Manifest

logger = logging.getLogger(__name__)

Pass = tuple[list[int], Prepared]  # the batch positions of a forward pass, and its inputs


@dataclass(frozen=True)
class BatchPolicy:
    enabled: bool
    max_batch_size: int
    max_delay_s: float
    max_queue_items: int


class _MetricsObserver:
    """Feeds the batcher's events into this model version's Prometheus series."""

    def __init__(self, name: str, version: int) -> None:
        labels = (name, str(version))
        self._depth = metrics.QUEUE_DEPTH.labels(*labels)
        self._wait = metrics.QUEUE_WAIT.labels(*labels)
        self._batch = metrics.BATCH_SIZE.labels(*labels)
        self._inference = metrics.INFERENCE_LATENCY.labels(*labels)
        self._rejected = metrics.REJECTIONS.labels(*labels)
        self._timeouts = metrics.TIMEOUTS.labels(*labels)
        self._instances = metrics.INSTANCES.labels(*labels)

    def queue_depth(self, items: int) -> None:
        self._depth.set(items)

    def dispatched(self, *, batch_size: int, queue_waits: Sequence[float]) -> None:
        self._batch.observe(batch_size)
        self._instances.inc(batch_size)
        for wait in queue_waits:
            self._wait.observe(wait)

    def computed(self, *, seconds: float) -> None:
        self._inference.observe(seconds)

    def rejected(self) -> None:
        self._rejected.inc()

    def timed_out(self) -> None:
        self._timeouts.inc()


class LoadedModel:
    def __init__(
        self,
        *,
        manifest: Manifest,
        handler: ModelHandler[Any, Any],
        module: torch.nn.Module,
        device: torch.device,
        precision: PrecisionChoice,
        torch_thread: TorchThread,
        policy: BatchPolicy,
    ) -> None:
        self.manifest = manifest
        self.handler = handler
        self.device = device
        self.precision = precision
        self.runtime = RuntimeChoice("eager", "RUNTIME=eager")
        self._module: Callable[..., Any] = module
        self._dtype = DTYPES[precision.precision]
        self._torch_thread = torch_thread
        # Requests that resolved this version and have not finished: unloading waits for them.
        self._users = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.batcher: DynamicBatcher[Any, Any] = DynamicBatcher(
            name=f"{manifest.name}/{manifest.version}",
            run_batch=self._run_batch,
            max_batch_size=policy.max_batch_size,
            max_delay_s=policy.max_delay_s,
            max_queue_items=policy.max_queue_items,
            enabled=policy.enabled,
            observer=_MetricsObserver(manifest.name, manifest.version),
        )

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> int:
        return self.manifest.version

    def acquire(self) -> None:
        self._users += 1
        self._idle.clear()

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self._idle.set()

    async def wait_idle(self, *, timeout: float) -> bool:
        """Until no request uses this version (True), or `timeout` passes (False)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def use(self, module: Callable[..., Any], runtime: RuntimeChoice) -> Callable[..., Any]:
        """Serve with `module` from now on; the module it served with until now."""
        previous, self._module, self.runtime = self._module, module, runtime
        return previous

    async def _run_batch(self, items: list[Any]) -> list[Any]:
        """One batch, one torch-thread job per pass: whatever was queued for the torch thread
        meanwhile (other models, other batches of this one) runs between two passes."""
        predictions: list[Any] = [None] * len(items)
        loop = asyncio.get_running_loop()

        def overlap() -> None:
            # From the torch thread, before the first pass: the next batch's job then queues
            # ahead of this batch's second pass.
            loop.call_soon_threadsafe(self.batcher.overlap)

        passes = await self._torch_thread.run(self._first_pass, items, predictions, overlap)
        for positions, prepared in passes:
            await self._torch_thread.run(self._forward_pass, positions, prepared, predictions)
        return predictions

    def _first_pass(
        self, items: list[Any], predictions: list[Any], overlap: Callable[[], None]
    ) -> list[Pass]:
        """Preprocess the batch and run its first pass (usually its only one); the rest."""
        first, *rest = self.handler.preprocess_in_passes(items)
        if rest:
            overlap()
        self._forward_pass(*first, predictions)
        return rest

    def forward(self, items: list[Any]) -> list[Any]:
        """Preprocess, forward and postprocess one batch. Call only on the torch thread."""
        predictions: list[Any] = [None] * len(items)
        for positions, prepared in self.handler.preprocess_in_passes(items):
            self._forward_pass(positions, prepared, predictions)
        return predictions

    def _forward_pass(
        self, positions: list[int], prepared: Prepared, predictions: list[Any]
    ) -> None:
        with torch.inference_mode():
            on_device = tuple(self._to_device(t) for t in prepared.inputs)
            outputs = self._module(*on_device)
            # Reading the result is the one synchronisation point with the device.
            host = to_host(outputs)
            done = self.handler.postprocess(host, prepared)
        for position, prediction in zip(positions, done, strict=True):
            predictions[position] = prediction

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        dtype = self._dtype if tensor.is_floating_point() else tensor.dtype
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, dtype=dtype, non_blocking=True)
        return tensor.to(dtype=dtype)


def to_host(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.cpu()
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(to_host(o) for o in outputs)
    return outputs


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """A TorchScript file. torch 2.13 deprecates the format; serving what users already have
    is the point of accepting it, so the deprecation is said once in the docs, not per load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=device
        )
    return module.eval()


def load_module(
    artifact: Path, artifact_format: str, device: torch.device, precision: PrecisionChoice
) -> torch.nn.Module:
    """Load an artifact onto a device in a precision. Call only on the torch thread."""
    module: torch.nn.Module
    try:
        if artifact_format == "torchscript":
            module = load_torchscript(artifact, device)
        else:
            program = torch.export.load(str(artifact))
            if device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            module = program.module()
    except Exception as e:  # torch raises many types for a corrupt archive
        raise ModelLoadError(
            f"{artifact.name}: not a loadable {artifact_format} archive: {e}"
        ) from e
    return module.to(dtype=DTYPES[precision.precision])


def load_model(
    *,
    manifest: Manifest,
    artifact: Path,
    device: torch.device,
    precision: PrecisionChoice,
    torch_thread: TorchThread,
    policy: BatchPolicy,
    runtime: RuntimeSetting = "eager",
    may_run_code: bool = False,
) -> LoadedModel:
    """Load and warm up one version. Call only on the torch thread."""
    started = time.monotonic()
    handler = handler_for(manifest, artifact.parent)
    module = load_module(artifact, manifest.format, device, precision)
    model = LoadedModel(
        manifest=manifest,
        handler=handler,
        module=module,
        device=device,
        precision=precision,
        torch_thread=torch_thread,
        policy=policy,
    )
    warm = handler.warmup_items()
    sizes = sorted({1, min(policy.max_batch_size, 8), policy.max_batch_size})
    full_batch = _warm_up(model, warm, sizes)
    if runtime != "eager":
        full_batch = (
            _choose_runtime(
                model, artifact.parent, runtime, may_run_code=may_run_code, warm=warm, sizes=sizes
            )
            or full_batch
        )
    # Admission control starts from the time of a full batch.
    model.batcher.calibrate(full_batch)
    elapsed = time.monotonic() - started
    metrics.MODEL_LOAD_SECONDS.labels(manifest.name, str(manifest.version)).set(elapsed)
    logger.info(
        "loaded model",
        extra={
            "model_name": manifest.name,
            "model_version": manifest.version,
            "device": str(device),
            "precision": precision.precision,
            "precision_reason": precision.reason,
            "runtime": model.runtime.runtime,
            "runtime_reason": model.runtime.reason,
            "load_seconds": round(elapsed, 3),
        },
    )
    return model


def _warm_up(model: LoadedModel, warm: list[Any], sizes: list[int]) -> float:
    """Run each batch size once, the full batch last; that last forward's seconds."""
    seconds = 0.0
    for size in sizes:
        began = time.monotonic()
        model.forward((warm * size)[:size])
        seconds = time.monotonic() - began
    return seconds


def _choose_runtime(
    model: LoadedModel,
    directory: Path,
    setting: RuntimeSetting,
    *,
    may_run_code: bool,
    warm: list[Any],
    sizes: list[int],
) -> float | None:
    """Serve the compiled variant where it is usable and (for RUNTIME=auto) faster here.

    The seconds of a full batch with the runtime chosen, or None to keep the eager figure."""
    variant, why = usable_variant(
        model.manifest, model.precision.precision, model.device, may_run_code=may_run_code
    )
    if variant is None:
        model.runtime = RuntimeChoice("eager", why)
        if setting == "compiled":
            logger.warning(
                "RUNTIME=compiled, serving eagerly",
                extra={"model_name": model.name, "model_version": model.version, "reason": why},
            )
        return None
    full = (warm * sizes[-1])[: sizes[-1]]
    try:
        compiled = load_compiled(directory / variant.file)
        eager = model.use(compiled, RuntimeChoice("compiled", f"RUNTIME={setting}"))
    except Exception as e:  # torch raises many types for a library that does not load
        _eager_after_all(model, f"the compiled variant failed to load: {e}")
        return None
    try:
        _warm_up(model, warm, sizes)
        compiled_seconds = median_seconds(lambda: model.forward(full))
    except Exception as e:  # nor for one that loads and then fails
        model.use(eager, model.runtime)
        _eager_after_all(model, f"the compiled variant failed its warm-up: {e}")
        return None
    if setting == "compiled":
        return compiled_seconds
    model.use(eager, model.runtime)
    eager_seconds = median_seconds(lambda: model.forward(full))
    timings = (
        f"a batch of {len(full)}: compiled {compiled_seconds * 1e3:.1f} ms, eager"
        f" {eager_seconds * 1e3:.1f} ms"
    )
    if compiled_seconds < eager_seconds:
        model.use(compiled, RuntimeChoice("compiled", f"RUNTIME=auto, faster here ({timings})"))
        return compiled_seconds
    model.runtime = RuntimeChoice(
        "eager", f"RUNTIME=auto, the compiled variant not faster here ({timings})"
    )
    return eager_seconds


def _eager_after_all(model: LoadedModel, why: str) -> None:
    model.runtime = RuntimeChoice("eager", why)
    logger.warning(
        "compiled variant unusable, serving eagerly",
        extra={"model_name": model.name, "model_version": model.version, "reason": why},
    )
