"""One loaded model version: its handler, the module it serves with, and its batcher."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.observability import metrics
from service.runtime.batcher import DynamicBatcher
from service.runtime.compiled import RuntimeChoice
from service.runtime.device import DTYPES, PrecisionChoice
from service.runtime.executor import TorchThread
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

    @property
    def module(self) -> Callable[..., Any]:
        """What forwards run: the artifact's module or a variant standing in for it."""
        return self._module

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
