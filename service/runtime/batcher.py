"""Dynamic batching: a list of inputs in, a list of outputs out, in the same order.

Requests queue per model version. A batch closes when it holds `max_batch_size` instances or
when its oldest request has waited `max_delay_s`, whichever comes first. Each batch is one call
of `run_batch`; while it runs, the next batch fills.

A batch that takes several forward passes (long texts) calls `overlap()` after its first: the
next batch may then start beside it, and the torch thread, first in first out, interleaves
their passes. A small request behind a huge one waits for one pass, not for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from service.runtime.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ShuttingDown,
    TooManyInstances,
)

logger = logging.getLogger(__name__)

# The share of a request's remaining time that its expected queue wait may take.
ADMISSION_MARGIN = 0.5
# Whether a request's client is still there is asked only once the request has waited this
# long: clients that leave are ones kept waiting, and the question (a receive under a
# cancelled scope) took 6.5% of the event loop's time when every request was asked.
ABANDONED_CHECK_AFTER_S = 0.1
# Batches of one model in progress at once, at most: past a few, each long batch only takes
# longer, and the estimates that admission control makes grow less true.
MAX_OVERLAPPING_BATCHES = 4

In = TypeVar("In")
Out = TypeVar("Out")


class BatchObserver(Protocol):
    def queue_depth(self, items: int) -> None: ...
    def dispatched(self, *, batch_size: int, queue_waits: Sequence[float]) -> None: ...
    def computed(self, *, seconds: float) -> None: ...
    def rejected(self) -> None: ...
    def timed_out(self) -> None: ...


@dataclass(frozen=True)
class Batched(Generic[Out]):
    """A request's outputs, and how its batch went (for logs)."""

    outputs: list[Out]
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Pending(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[Batched[Out]]
    enqueued_at: float
    deadline: float
    is_abandoned: Callable[[], Awaitable[bool]] | None = field(default=None)


class DynamicBatcher(Generic[In, Out]):
    def __init__(
        self,
        *,
        name: str,
        run_batch: Callable[[list[In]], Awaitable[list[Out]]],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_items: int,
        enabled: bool,
        observer: BatchObserver,
        check_abandoned_after_s: float = ABANDONED_CHECK_AFTER_S,
    ) -> None:
        self.name = name
        self.check_abandoned_after_s = check_abandoned_after_s
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue_items = max(max_queue_items, max_batch_size)
        self.enabled = enabled
        self._run_batch = run_batch
        self._observer = observer
        self._queue: deque[_Pending[In, Out]] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._recent_batch_s = 0.01
        self._batches_seen = 0
        self._running: set[asyncio.Task[None]] = set()
        self._overlap = asyncio.Event()  # set by the newest batch when the next may start

    def calibrate(self, batch_s: float) -> None:
        """Seed the batch-time estimate, e.g. with the warm-up's full batch: otherwise the first
        burst after startup is admitted on a guess, and what exceeds the deadline times out."""
        self._recent_batch_s = batch_s

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Finish what is queued, then stop. New submissions are refused from now on."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        await asyncio.gather(*self._running)

    def overlap(self) -> None:
        """Called by `run_batch` during a batch that has more passes to go: the next batch may
        start now, beside it."""
        self._overlap.set()

    async def submit(
        self,
        items: Sequence[In],
        *,
        deadline: float,
        is_abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[Out]:
        """Queue `items` as one request; returns their outputs in order, or raises."""
        batched = await self.submit_detailed(items, deadline=deadline, is_abandoned=is_abandoned)
        return batched.outputs

    async def submit_detailed(
        self,
        items: Sequence[In],
        *,
        deadline: float,
        is_abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> Batched[Out]:
        """Like `submit`, with the batch's size and timings."""
        if self._closing:
            raise ShuttingDown(f"model {self.name} is shutting down")
        if len(items) > self.max_batch_size:
            raise TooManyInstances(
                f"{len(items)} instances exceed this model's max_batch_size"
                f" of {self.max_batch_size}"
            )
        if self._queued_items + len(items) > self.max_queue_items:
            self._observer.rejected()
            raise QueueFull(
                f"the queue for {self.name} is full ({self._queued_items} instances waiting)",
                retry_after_s=self._retry_after_s(),
            )
        now = time.monotonic()
        if deadline <= now:
            self._observer.timed_out()
            raise DeadlineExceeded("the request's deadline passed before it was queued")
        # Past capacity, the item bound alone is not enough: on a slow model, the queue can hold
        # more work than a deadline allows, and every request would wait it out and fail with
        # 504. A request that cannot be served in time is refused now, with 429, instead. The
        # estimate is an average and batch times vary (one long text costs many short ones), so
        # it must fit in half the time left: at the edge, half the admitted would time out.
        wait_s = self._expected_wait_s(len(items))
        if wait_s > (deadline - now) * ADMISSION_MARGIN:
            self._observer.rejected()
            raise QueueFull(
                f"the queue for {self.name} holds about {wait_s:.1f} s of work, more than the"
                f" request's remaining {deadline - now:.1f} s",
                retry_after_s=self._retry_after_s(),
            )
        future: asyncio.Future[Batched[Out]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items, future, now, deadline, is_abandoned))
        self._queued_items += len(items)
        self._observer.queue_depth(self._queued_items)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(future, timeout=deadline - now)
        except TimeoutError:
            # wait_for cancelled the future: the loop skips it if it has not run yet.
            self._observer.timed_out()
            raise DeadlineExceeded("the request's deadline passed before its result") from None

    def _expected_wait_s(self, items: int) -> float:
        """Seconds until `items` more instances would be computed, at the recent batch time:
        the batch in progress, then the queue ahead, in batches, then their own."""
        if self.enabled:
            batches = math.ceil((self._queued_items + items) / self.max_batch_size)
        else:
            batches = len(self._queue) + 1
        return (batches + len(self._running)) * self._recent_batch_s

    def _retry_after_s(self) -> int:
        return max(1, round(self._expected_wait_s(0) + 0.5))

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.enabled:
                await self._fill()
            batch = self._take_batch()
            live = await self._drop_dead(batch)
            if live:
                await self._start(live)

    async def _start(self, batch: list[_Pending[In, Out]]) -> None:
        """Start computing `batch`; return when the next batch may start."""
        # Set by overlap(), or when the batch is done: one wait, and no task to wait with.
        turn = self._overlap = asyncio.Event()
        task = asyncio.create_task(self._compute(batch))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(lambda _: turn.set())
        await turn.wait()
        while len(self._running) >= MAX_OVERLAPPING_BATCHES:
            await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)

    async def _fill(self) -> None:
        close_at = self._queue[0].enqueued_at + self.max_delay_s
        while self._queued_items < self.max_batch_size and not self._closing:
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return

    def _take_batch(self) -> list[_Pending[In, Out]]:
        batch = [self._queue.popleft()]
        size = len(batch[0].items)
        if self.enabled:
            while self._queue and size + len(self._queue[0].items) <= self.max_batch_size:
                nxt = self._queue.popleft()
                batch.append(nxt)
                size += len(nxt.items)
        self._queued_items -= size
        self._observer.queue_depth(self._queued_items)
        return batch

    async def _drop_dead(self, batch: list[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """Skip requests nobody waits for any more: past their deadline, or (once they have
        waited a while) their client gone."""
        now = time.monotonic()
        live: list[_Pending[In, Out]] = []
        for pending in batch:
            if pending.future.done():
                continue
            if pending.deadline <= now:
                pending.future.set_exception(DeadlineExceeded("deadline passed in the queue"))
                continue
            if (
                pending.is_abandoned is not None
                and now - pending.enqueued_at >= self.check_abandoned_after_s
                and await pending.is_abandoned()
            ):
                # That await let the request's own deadline fire: the future may be done now.
                if not pending.future.done():
                    pending.future.set_exception(ClientDisconnected("the client disconnected"))
                continue
            if pending.future.done():
                continue
            live.append(pending)
        return live

    async def _compute(self, batch: list[_Pending[In, Out]]) -> None:
        items = [item for pending in batch for item in pending.items]
        started = time.monotonic()
        self._observer.dispatched(
            batch_size=len(items), queue_waits=[started - p.enqueued_at for p in batch]
        )
        try:
            outputs = await self._run_batch(items)
            if len(outputs) != len(items):
                raise RuntimeError(f"{len(items)} inputs gave {len(outputs)} outputs")
        except Exception as e:
            logger.exception("batch of %d instances failed for %s", len(items), self.name)
            failure = InferenceFailed(f"inference failed for model {self.name}")
            failure.__cause__ = e
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        finally:
            elapsed = time.monotonic() - started
            # A moving average that trusts the first real batches more than the seed.
            self._batches_seen += 1
            weight = max(0.2, 1 / (self._batches_seen + 1))
            self._recent_batch_s += weight * (elapsed - self._recent_batch_s)
            self._observer.computed(seconds=elapsed)
        offset = 0
        for pending in batch:
            n = len(pending.items)
            if not pending.future.done():
                pending.future.set_result(
                    Batched(
                        outputs[offset : offset + n],
                        batch_size=len(items),
                        queue_s=started - pending.enqueued_at,
                        inference_s=elapsed,
                    )
                )
            offset += n
