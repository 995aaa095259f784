"""Shadow traffic: a request's instances, sent to the shadow version after the primary answered.

Off the request path and bounded: `offer` never waits. A full queue drops the shadow request and
counts it, so a slow shadow costs coverage, never the primary's latency. The shadow computes on
a thread of its own at the lowest CPU priority (nice 19), not on the torch thread the primary
versions share: a batch of a version 50x slower would otherwise hold every primary batch behind
it, and at equal priority it would take half the CPU. Its result is never cached and never
returned; its log row (role `shadow`) carries its agreement with the primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.observability import metrics
from service.runtime.device import configure_torch_threads
from service.runtime.errors import RuntimeProblem
from service.runtime.model import LoadedModel
from service.storage.prediction_log import PredictionRow

logger = logging.getLogger(__name__)

_LOWEST_PRIORITY = 19
# A shadow request that waited longer is dropped: the comparison is of current traffic, and a
# policy that stops shadowing stops costing CPU within seconds.
_MAX_WAIT_S = 2.0


def _lower_this_thread() -> None:
    configure_torch_threads(1)
    # On Linux a thread id names one thread: only this thread yields the CPU to the others.
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LOWEST_PRIORITY)


@dataclass
class ShadowRequest:
    model: str
    version: int
    items: Sequence[Any]
    primary: Sequence[Any]  # the primary's predictions of the same items
    primary_version: int
    request_id: str
    client_addr: str | None
    api_key_id: str | None
    offered_at: float = field(default_factory=time.monotonic)


class ShadowRunner:
    def __init__(
        self,
        *,
        resolve: Callable[[str, int], LoadedModel],
        queue_size: int,
        max_busy: float,
        record: Callable[[PredictionRow], None] | None,
        replica_id: str,
    ) -> None:
        self._resolve = resolve
        self._queue: asyncio.Queue[ShadowRequest] = asyncio.Queue(maxsize=queue_size)
        self._max_busy = max_busy
        self._record = record
        self._replica_id = replica_id
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="shadow", initializer=_lower_this_thread
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shadow-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)

    def offer(self, request: ShadowRequest) -> bool:
        """Queue the shadow request, or drop it when the queue is full; never waits."""
        try:
            self._queue.put_nowait(request)
        except asyncio.QueueFull:
            labels = (request.model, str(request.version))
            metrics.SHADOW_PREDICTIONS.labels(*labels, "dropped").inc()
            return False
        return True

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            request = await self._queue.get()
            if time.monotonic() - request.offered_at > _MAX_WAIT_S:
                labels = (request.model, str(request.version))
                metrics.SHADOW_PREDICTIONS.labels(*labels, "dropped").inc()
                continue
            try:
                # Resolved now, not when offered: a version unloaded meanwhile is skipped,
                # and a queued request holds no version up from unloading.
                model = self._resolve(request.model, request.version)
            except RuntimeProblem:
                continue
            model.acquire()
            try:
                busy = await self._run(loop, model, request)
            finally:
                model.release()
            # At most `max_busy` of the time computing: a slow shadow gets fewer requests
            # (the queue drops the rest), the primaries keep their CPU.
            await asyncio.sleep(busy * (1 / self._max_busy - 1))

    async def _run(
        self, loop: asyncio.AbstractEventLoop, model: LoadedModel, request: ShadowRequest
    ) -> float:
        """The shadow's prediction of the request, compared and logged; the seconds it took."""
        labels = (model.name, str(model.version))
        started = time.monotonic()
        try:
            predictions = await loop.run_in_executor(self._pool, model.forward, list(request.items))
            agreement = model.handler.agreement(request.primary, predictions)
        except Exception as e:  # the shadow's failure is data, not the primary's problem
            logger.warning("shadow %s/%s failed: %s", *labels, e)
            metrics.SHADOW_PREDICTIONS.labels(*labels, "failed").inc()
            self._log(model, request, started, status=500, error=type(e).__name__)
            return time.monotonic() - started
        seconds = time.monotonic() - started
        metrics.SHADOW_PREDICTIONS.labels(*labels, "computed").inc()
        metrics.SHADOW_LATENCY.labels(*labels).observe(seconds)
        metrics.SHADOW_AGREEMENT.labels(*labels, agreement.kind).observe(agreement.value)
        self._log(model, request, started, agreement=(agreement.kind, agreement.value))
        return seconds

    def _log(
        self,
        model: LoadedModel,
        request: ShadowRequest,
        started: float,
        *,
        status: int = 200,
        error: str | None = None,
        agreement: tuple[str, float] | None = None,
    ) -> None:
        if self._record is None:
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        self._record(
            PredictionRow(
                request_id=request.request_id,
                # Its own time: (request_id, created_at) is the key, and the primary's row
                # has the request's start.
                created_at=dt.datetime.now(dt.UTC),
                model_name=model.name,
                model_version=model.version,
                client_addr=request.client_addr,
                status_code=status,
                cache_result="bypass",
                instances=len(request.items),
                batch_size=len(request.items),
                queue_ms=None,
                inference_ms=elapsed_ms,
                total_ms=elapsed_ms,
                input_digest=None,
                output_digest=None,
                input_payload=None,
                output_payload=None,
                payload_cap_bytes=0,
                replica_id=self._replica_id,
                error_type=error,
                api_key_id=request.api_key_id,
                role="shadow",
                compared_version=request.primary_version,
                agreement=agreement[1] if agreement else None,
                agreement_kind=agreement[0] if agreement else None,
            )
        )
