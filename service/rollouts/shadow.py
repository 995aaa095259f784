"""Shadow traffic: a request's instances, sent to the shadow version after the primary answered.

Off the request path and bounded: `offer` never waits. A full queue drops the shadow request and
counts it, so a slow shadow costs coverage, never the primary's latency. The shadow computes in
a process of its own at the lowest CPU priority (service/rollouts/shadow_worker.py), and for at
most SHADOW_MAX_BUSY of the time; the worker's thread only waits on its pipe. Its result is
never cached and never returned; its log row (role `shadow`) carries its agreement with the
primary.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.observability import metrics
from service.rollouts.shadow_process import ShadowProcess
from service.runtime.errors import RuntimeProblem
from service.runtime.model import LoadedModel
from service.runtime.registry import VersionState
from service.runtime.repository import VersionRef
from service.storage.prediction_log import PredictionRow

logger = logging.getLogger(__name__)

# A shadow request that waited longer is dropped: the comparison is of current traffic, and a
# policy that stops shadowing stops costing CPU within seconds.
_MAX_WAIT_S = 2.0
# How often the runner looks at the policies: a shadow version is loaded into the shadow
# process as soon as a policy names it, not on its first request, and the process ends when no
# policy names one.
_FOLLOW_EVERY_S = 1.0


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
        resolve: Callable[[str, int], VersionState],
        process: ShadowProcess,
        wanted: Callable[[], set[tuple[str, int]]],
        queue_size: int,
        max_busy: float,
        record: Callable[[PredictionRow], None] | None,
        replica_id: str,
    ) -> None:
        self._resolve = resolve
        self._process = process
        self._wanted = wanted
        # model: (version, manifest digest, process id) of the version the process holds
        self._prepared: dict[str, tuple[int, str | None, int | None]] = {}
        self._followed_at = -math.inf
        self._queue: asyncio.Queue[ShadowRequest] = asyncio.Queue(maxsize=queue_size)
        self._max_busy = max_busy
        self._record = record
        self._replica_id = replica_id
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="shadow-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await asyncio.to_thread(self._process.stop)  # a prediction under way ends with it
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
            if time.monotonic() - self._followed_at >= _FOLLOW_EVERY_S:
                await self._follow_policies(loop)
                self._followed_at = time.monotonic()
            try:
                request = await asyncio.wait_for(self._queue.get(), _FOLLOW_EVERY_S)
            except TimeoutError:
                continue
            if time.monotonic() - request.offered_at > _MAX_WAIT_S:
                labels = (request.model, str(request.version))
                metrics.SHADOW_PREDICTIONS.labels(*labels, "dropped").inc()
                continue
            # Resolved now, not when offered: a version unloaded meanwhile is skipped.
            target = self._target(request.model, request.version)
            if target is None:
                continue
            busy = await self._run(loop, *target, request)
            # At most `max_busy` of the time computing: a slow shadow gets fewer requests
            # (the queue drops the rest), the primaries keep their CPU.
            await asyncio.sleep(busy * (1 / self._max_busy - 1))

    def _target(
        self, model: str, version: int
    ) -> tuple[VersionRef, str | None, LoadedModel] | None:
        """Where the shadow process finds the version, its manifest digest, and the worker's
        own copy; None when the worker does not serve it loaded."""
        try:
            state = self._resolve(model, version)
        except RuntimeProblem:
            return None
        if state.model is None or state.path is None:
            return None
        return VersionRef(model, version, state.path), state.manifest_digest, state.model

    async def _follow_policies(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every shadow version the policies name, loaded into the shadow process before its
        first request; the process ended when they name none."""
        wanted: dict[str, tuple[VersionRef, str | None]] = {}
        for model, version in sorted(self._wanted()):
            if (target := self._target(model, version)) is not None:
                wanted[model] = target[:2]
        for model, (version, _, _) in list(self._prepared.items()):
            if model not in wanted or wanted[model][0].version != version:
                metrics.SHADOW_READY.labels(model, str(version)).set(0)
                del self._prepared[model]
        if not wanted:
            if self._process.pid is not None:
                await loop.run_in_executor(self._pool, self._process.stop)
            return
        for model, (ref, digest) in wanted.items():
            if self._prepared.get(model) == (ref.version, digest, self._process.pid):
                continue
            ready = metrics.SHADOW_READY.labels(model, str(ref.version))
            ready.set(0)
            try:
                await loop.run_in_executor(self._pool, self._process.predict, ref, digest, [])
            except Exception as e:  # its requests will fail and be counted; not retried here
                logger.warning("shadow %s/%s did not load: %s", model, ref.version, e)
            else:
                ready.set(1)
            self._prepared[model] = (ref.version, digest, self._process.pid)

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        ref: VersionRef,
        digest: str | None,
        model: LoadedModel,
        request: ShadowRequest,
    ) -> float:
        """The shadow's prediction of the request, compared and logged; the seconds it took.
        `model` is the worker's copy of the version: its handler compares the predictions."""
        labels = (model.name, str(model.version))
        items = list(request.items)
        started = time.monotonic()
        try:
            predictions = await loop.run_in_executor(
                self._pool, self._process.predict, ref, digest, items
            )
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
