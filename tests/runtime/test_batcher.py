"""DynamicBatcher: batch composition, ordering, admission control, deadlines and shutdown.

`run_batch` is a real async function that records every batch it receives, and the observer is
a recording implementation of the `BatchObserver` protocol: both are the batcher's seams, so
nothing inside the batcher is mocked. Tests assert batch composition and counts, never tight
timings, so they stay deterministic on a loaded machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from service.runtime.batcher import MAX_OVERLAPPING_BATCHES, DynamicBatcher
from service.runtime.errors import (
    ClientDisconnected,
    DeadlineExceeded,
    InferenceFailed,
    QueueFull,
    ShuttingDown,
    TooManyInstances,
)

pytestmark = pytest.mark.unit

GENEROUS_DELAY_S = 5.0  # far longer than any test runs: a batch only closes early by filling up
STEP_TIMEOUT_S = 3.0  # a bound on each await, so that a hang fails instead of stalling the suite


class RecordingObserver:
    """A BatchObserver that keeps every call it receives."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.dispatches: list[int] = []
        self.computes = 0
        self.rejections = 0
        self.timeouts = 0

    def queue_depth(self, items: int) -> None:
        self.depths.append(items)

    def dispatched(self, *, batch_size: int, queue_waits: Sequence[float]) -> None:
        self.dispatches.append(batch_size)

    def computed(self, *, seconds: float) -> None:
        self.computes += 1

    def rejected(self) -> None:
        self.rejections += 1

    def timed_out(self) -> None:
        self.timeouts += 1


class RecordingModel:
    """An async run_batch: records each batch and returns `out-<item>` for each item.

    `gate`, when cleared, holds every batch inside run_batch until it is set again; `entered`
    is set as soon as a batch arrives, so a test can wait until the loop is busy computing.
    """

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.called_at: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[str]) -> list[str]:
        self.batches.append(list(items))
        self.called_at.append(time.monotonic())
        self.entered.set()
        await self.gate.wait()
        if "boom" in items:
            raise ValueError("the model blew up")
        if "short" in items:
            return [f"out-{item}" for item in items][:-1]
        return [f"out-{item}" for item in items]


BatcherFactory = Callable[..., DynamicBatcher[str, str]]


@pytest.fixture
def model() -> RecordingModel:
    return RecordingModel()


@pytest.fixture
def observer() -> RecordingObserver:
    return RecordingObserver()


@pytest.fixture
async def make_batcher(
    model: RecordingModel, observer: RecordingObserver
) -> AsyncIterator[BatcherFactory]:
    """Builds and starts batchers; stops every one of them (finishing its queue) afterwards."""
    created: list[DynamicBatcher[str, str]] = []

    def factory(**overrides: Any) -> DynamicBatcher[str, str]:
        options: dict[str, Any] = {
            "name": "test-model",
            "run_batch": model,
            "max_batch_size": 8,
            "max_delay_s": GENEROUS_DELAY_S,
            "max_queue_items": 64,
            "enabled": True,
            "observer": observer,
        }
        options.update(overrides)
        batcher: DynamicBatcher[str, str] = DynamicBatcher(**options)
        batcher.start()
        created.append(batcher)
        return batcher

    yield factory
    model.gate.set()
    for batcher in created:
        await asyncio.wait_for(batcher.stop(), timeout=STEP_TIMEOUT_S)


def later(seconds: float = 30.0) -> float:
    return time.monotonic() + seconds


async def submit_together(
    batcher: DynamicBatcher[str, str], requests: Sequence[Sequence[str]]
) -> list[list[str]]:
    """Submit every request concurrently: all are queued before the batch loop runs again."""
    calls = [batcher.submit(items, deadline=later()) for items in requests]
    return await asyncio.wait_for(asyncio.gather(*calls), timeout=STEP_TIMEOUT_S)


async def test_concurrent_requests_share_one_run_batch_call(
    make_batcher: BatcherFactory, model: RecordingModel, observer: RecordingObserver
) -> None:
    batcher = make_batcher(max_batch_size=8, max_delay_s=GENEROUS_DELAY_S)

    results = await submit_together(batcher, [[f"r{i}"] for i in range(8)])

    assert model.batches == [[f"r{i}" for i in range(8)]]
    assert results == [[f"out-r{i}"] for i in range(8)]
    assert observer.dispatches == [8]
    assert observer.computes == 1


async def test_a_batch_closes_at_max_batch_size_without_splitting_requests(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=GENEROUS_DELAY_S)
    requests = [["a1", "a2", "a3"], ["b1", "b2"], ["c1", "c2"], ["d1"], ["e1", "e2", "e3", "e4"]]

    results = await submit_together(batcher, requests)

    # FIFO, never more than 4 instances, and a request that does not fit waits for the next batch.
    assert model.batches == [
        ["a1", "a2", "a3"],
        ["b1", "b2", "c1", "c2"],
        ["d1"],
        ["e1", "e2", "e3", "e4"],
    ]
    assert all(len(batch) <= 4 for batch in model.batches)
    assert results == [[f"out-{item}" for item in items] for items in requests]


async def test_a_partial_batch_waits_for_more_until_it_is_full(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=GENEROUS_DELAY_S)

    first = asyncio.create_task(batcher.submit(["a", "b"], deadline=later()))
    await asyncio.sleep(0.05)
    assert model.batches == []  # half full, and far from its delay: still waiting
    assert not first.done()

    second = await asyncio.wait_for(
        batcher.submit(["c", "d"], deadline=later()), timeout=STEP_TIMEOUT_S
    )

    assert model.batches == [["a", "b", "c", "d"]]
    assert await first == ["out-a", "out-b"]
    assert second == ["out-c", "out-d"]


async def test_a_batch_that_is_not_full_closes_after_max_delay(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    delay = 0.05
    batcher = make_batcher(max_batch_size=8, max_delay_s=delay)
    before = time.monotonic()

    results = await submit_together(batcher, [["a"], ["b", "c"], ["d"]])

    assert model.batches == [["a", "b", "c", "d"]]
    assert results == [["out-a"], ["out-b", "out-c"], ["out-d"]]
    # It waited for more (asyncio timers may fire up to a clock tick early, hence the margin).
    assert model.called_at[0] - before >= delay * 0.8


async def test_a_full_queue_keeps_filling_the_next_batch_until_it_times_out(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=0.05)

    results = await submit_together(batcher, [[f"r{i}"] for i in range(6)])

    assert model.batches == [["r0", "r1", "r2", "r3"], ["r4", "r5"]]
    assert results == [[f"out-r{i}"] for i in range(6)]


async def test_each_caller_gets_its_own_outputs_in_order(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=16, max_delay_s=0.05)
    requests = [["x3", "x1", "x2"], ["y"], ["z2", "z1"], ["w1", "w2", "w3", "w4"]]

    results = await submit_together(batcher, requests)

    assert len(model.batches) == 1
    assert results == [
        ["out-x3", "out-x1", "out-x2"],
        ["out-y"],
        ["out-z2", "out-z1"],
        ["out-w1", "out-w2", "out-w3", "out-w4"],
    ]


async def test_more_instances_than_max_batch_size_raise_too_many_instances(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=4)

    with pytest.raises(TooManyInstances, match="max_batch_size"):
        await batcher.submit(["a", "b", "c", "d", "e"], deadline=later())

    assert model.batches == []


async def test_a_full_queue_raises_queue_full_with_a_retry_after(
    make_batcher: BatcherFactory, model: RecordingModel, observer: RecordingObserver
) -> None:
    batcher = make_batcher(max_batch_size=2, max_queue_items=2, max_delay_s=GENEROUS_DELAY_S)
    model.gate.clear()
    computing = asyncio.create_task(batcher.submit(["a1", "a2"], deadline=later()))
    await asyncio.wait_for(model.entered.wait(), timeout=STEP_TIMEOUT_S)
    queued = asyncio.create_task(batcher.submit(["b1", "b2"], deadline=later()))
    await asyncio.sleep(0)  # let it join the queue, which now holds 2 of 2 instances

    with pytest.raises(QueueFull) as refused:
        await batcher.submit(["c1"], deadline=later())

    assert refused.value.retry_after_s >= 1
    assert observer.rejections == 1
    model.gate.set()
    assert await asyncio.wait_for(computing, STEP_TIMEOUT_S) == ["out-a1", "out-a2"]
    assert await asyncio.wait_for(queued, STEP_TIMEOUT_S) == ["out-b1", "out-b2"]
    assert model.batches == [["a1", "a2"], ["b1", "b2"]]


async def test_a_request_the_queue_cannot_serve_in_time_is_refused_at_once(
    make_batcher: BatcherFactory, observer: RecordingObserver
) -> None:
    gate = asyncio.Event()
    gate.set()

    async def slow(items: list[str]) -> list[str]:
        await asyncio.sleep(0.1)  # every batch takes at least this long, however fast the machine
        await gate.wait()
        return [f"out-{item}" for item in items]

    batcher = make_batcher(run_batch=slow, max_batch_size=1)
    for i in range(10):  # the batcher learns the batch time
        await asyncio.wait_for(batcher.submit([f"w{i}"], deadline=later()), STEP_TIMEOUT_S)
    gate.clear()
    busy = asyncio.create_task(batcher.submit(["busy"], deadline=later()))
    await asyncio.sleep(0.05)  # "busy" is computing
    patient = asyncio.create_task(batcher.submit(["patient"], deadline=later()))
    await asyncio.sleep(0)

    # Ahead of it: the batch in progress and "patient", about 0.1 s each, then its own: about
    # 0.3 s, where 0.15 s is left.
    asked = time.monotonic()
    with pytest.raises(QueueFull) as refused:
        await batcher.submit(["hurried"], deadline=time.monotonic() + 0.15)

    assert time.monotonic() - asked < 0.15, "refused at once, not after waiting out its deadline"
    assert refused.value.retry_after_s >= 1
    assert observer.rejections == 1 and observer.timeouts == 0
    gate.set()
    assert await asyncio.wait_for(busy, STEP_TIMEOUT_S) == ["out-busy"]
    assert await asyncio.wait_for(patient, STEP_TIMEOUT_S) == ["out-patient"]


async def test_a_calibrated_batcher_refuses_what_its_batch_time_cannot_serve(
    make_batcher: BatcherFactory, model: RecordingModel, observer: RecordingObserver
) -> None:
    guessing, calibrated = make_batcher(max_delay_s=0.01), make_batcher(max_delay_s=0.01)
    calibrated.calibrate(1.0)  # e.g. a slow model's full batch at warm-up

    hurried = time.monotonic() + 1.5  # a batch of 1 s must fit in half of that: it does not
    assert await asyncio.wait_for(guessing.submit(["a"], deadline=hurried), STEP_TIMEOUT_S)
    with pytest.raises(QueueFull):
        await calibrated.submit(["b"], deadline=hurried)
    assert observer.rejections == 1
    assert model.batches == [["a"]]


async def test_a_deadline_already_past_is_refused_at_submit(
    make_batcher: BatcherFactory, model: RecordingModel, observer: RecordingObserver
) -> None:
    batcher = make_batcher()

    with pytest.raises(DeadlineExceeded):
        await batcher.submit(["a"], deadline=time.monotonic() - 1)

    assert observer.timeouts == 1
    assert model.batches == []


async def test_a_request_whose_deadline_passes_in_the_queue_is_never_computed(
    make_batcher: BatcherFactory, model: RecordingModel, observer: RecordingObserver
) -> None:
    batcher = make_batcher(max_batch_size=2, max_delay_s=0.05)
    model.gate.clear()
    busy = asyncio.create_task(batcher.submit(["a1", "a2"], deadline=later()))
    await asyncio.wait_for(model.entered.wait(), timeout=STEP_TIMEOUT_S)

    # The loop is stuck computing "a": this request can only wait in the queue, and time out.
    with pytest.raises(DeadlineExceeded):
        await batcher.submit(["late"], deadline=time.monotonic() + 0.05)
    assert observer.timeouts == 1

    # "patient" now shares the queue with the expired request; only it may reach the model.
    patient = asyncio.create_task(batcher.submit(["patient"], deadline=later()))
    await asyncio.sleep(0)
    model.gate.set()

    assert await asyncio.wait_for(busy, STEP_TIMEOUT_S) == ["out-a1", "out-a2"]
    assert await asyncio.wait_for(patient, STEP_TIMEOUT_S) == ["out-patient"]
    assert model.batches == [["a1", "a2"], ["patient"]]


def client(asked: list[str], name: str, *, gone: bool) -> Callable[[], Any]:
    """An `is_abandoned` check that answers `gone`, and notes in `asked` that it was asked."""

    async def is_abandoned() -> bool:
        asked.append(name)
        return gone

    return is_abandoned


async def test_an_abandoned_request_is_dropped_before_compute(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(
        max_batch_size=2, max_delay_s=GENEROUS_DELAY_S, check_abandoned_after_s=0.0
    )
    asked: list[str] = []

    gone = asyncio.create_task(
        batcher.submit(["gone"], deadline=later(), is_abandoned=client(asked, "gone", gone=True))
    )
    present = asyncio.create_task(
        batcher.submit(["here"], deadline=later(), is_abandoned=client(asked, "here", gone=False))
    )

    assert await asyncio.wait_for(present, STEP_TIMEOUT_S) == ["out-here"]
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(gone, STEP_TIMEOUT_S)
    assert sorted(asked) == ["gone", "here"]
    assert model.batches == [["here"]]


async def test_only_a_request_that_waited_is_asked_whether_its_client_left(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=8, max_delay_s=0.0, check_abandoned_after_s=0.2)
    asked: list[str] = []
    model.gate.clear()
    busy = asyncio.create_task(batcher.submit(["busy"], deadline=later()))
    await asyncio.wait_for(model.entered.wait(), timeout=STEP_TIMEOUT_S)
    # Queued while "busy" computes: "old" waits past the threshold, "new" does not.
    old = asyncio.create_task(
        batcher.submit(["old"], deadline=later(), is_abandoned=client(asked, "old", gone=True))
    )
    await asyncio.sleep(0.3)
    new = asyncio.create_task(
        batcher.submit(["new"], deadline=later(), is_abandoned=client(asked, "new", gone=True))
    )
    await asyncio.sleep(0)
    model.gate.set()

    assert await asyncio.wait_for(busy, STEP_TIMEOUT_S) == ["out-busy"]
    assert await asyncio.wait_for(new, STEP_TIMEOUT_S) == ["out-new"]
    with pytest.raises(ClientDisconnected):
        await asyncio.wait_for(old, STEP_TIMEOUT_S)
    assert asked == ["old"]
    assert model.batches == [["busy"], ["new"]]


async def test_with_batching_disabled_each_request_is_its_own_batch(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(enabled=False, max_batch_size=8, max_delay_s=GENEROUS_DELAY_S)
    requests = [["a"], ["b1", "b2"], ["c"], ["d"]]

    results = await submit_together(batcher, requests)

    assert model.batches == requests
    assert results == [[f"out-{item}" for item in items] for items in requests]


async def test_a_failing_batch_fails_every_caller_and_the_loop_keeps_serving(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=4, max_delay_s=GENEROUS_DELAY_S)

    failed = await asyncio.wait_for(
        asyncio.gather(
            *(batcher.submit([item], deadline=later()) for item in ("a", "boom", "c", "d")),
            return_exceptions=True,
        ),
        timeout=STEP_TIMEOUT_S,
    )

    assert len(model.batches) == 1
    assert all(isinstance(outcome, InferenceFailed) for outcome in failed)
    assert all(isinstance(outcome.__cause__, ValueError) for outcome in failed)

    results = await submit_together(batcher, [["e"], ["f"], ["g"], ["h"]])
    assert results == [["out-e"], ["out-f"], ["out-g"], ["out-h"]]
    assert len(model.batches) == 2


async def test_a_batch_returning_the_wrong_number_of_outputs_fails_as_inference_failed(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=2, max_delay_s=GENEROUS_DELAY_S)

    failed = await asyncio.wait_for(
        asyncio.gather(
            batcher.submit(["short"], deadline=later()),
            batcher.submit(["x"], deadline=later()),
            return_exceptions=True,
        ),
        timeout=STEP_TIMEOUT_S,
    )

    assert all(isinstance(outcome, InferenceFailed) for outcome in failed)
    assert await submit_together(batcher, [["y1", "y2"]]) == [["out-y1", "out-y2"]]


async def test_stop_finishes_queued_work_then_refuses_new_requests(
    make_batcher: BatcherFactory, model: RecordingModel
) -> None:
    batcher = make_batcher(max_batch_size=8, max_delay_s=GENEROUS_DELAY_S)
    pending = [
        asyncio.create_task(batcher.submit(items, deadline=later()))
        for items in (["a"], ["b1", "b2"], ["c"])
    ]
    await asyncio.sleep(0)  # all three are queued, in a batch that is far from full

    # Stopping does not wait out the batch delay: it computes what is queued at once.
    await asyncio.wait_for(batcher.stop(), timeout=STEP_TIMEOUT_S)

    results = await asyncio.wait_for(asyncio.gather(*pending), timeout=STEP_TIMEOUT_S)
    assert results == [["out-a"], ["out-b1", "out-b2"], ["out-c"]]
    assert model.batches == [["a", "b1", "b2", "c"]]
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(batcher.submit(["late"], deadline=later()), STEP_TIMEOUT_S)
    assert model.batches == [["a", "b1", "b2", "c"]]


async def test_a_batch_that_overlaps_lets_the_next_one_start_beside_it(
    make_batcher: BatcherFactory,
) -> None:
    started: list[str] = []
    release = asyncio.Event()
    batcher: DynamicBatcher[str, str]

    async def passes(items: list[str]) -> list[str]:
        started.append(items[0])
        if items[0] == "long":
            batcher.overlap()  # more passes to come: the next batch need not wait for them
            await release.wait()
        return [f"out-{item}" for item in items]

    batcher = make_batcher(run_batch=passes, max_batch_size=1)
    long = asyncio.create_task(batcher.submit(["long"], deadline=later()))
    await asyncio.sleep(0.01)
    short = await asyncio.wait_for(batcher.submit(["short"], deadline=later()), STEP_TIMEOUT_S)

    assert short == ["out-short"] and not long.done()
    release.set()
    assert await asyncio.wait_for(long, STEP_TIMEOUT_S) == ["out-long"]
    assert started == ["long", "short"]


async def test_overlapping_batches_are_bounded(make_batcher: BatcherFactory) -> None:
    running = 0
    most = 0
    release = asyncio.Event()
    batcher: DynamicBatcher[str, str]

    async def passes(items: list[str]) -> list[str]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        batcher.overlap()
        await release.wait()
        running -= 1
        return [f"out-{item}" for item in items]

    batcher = make_batcher(run_batch=passes, max_batch_size=1)
    calls = [
        asyncio.create_task(batcher.submit([f"r{i}"], deadline=later()))
        for i in range(MAX_OVERLAPPING_BATCHES + 3)
    ]
    await asyncio.sleep(0.05)
    assert running == MAX_OVERLAPPING_BATCHES
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*calls), STEP_TIMEOUT_S)
    assert results == [[f"out-r{i}"] for i in range(MAX_OVERLAPPING_BATCHES + 3)]
    assert most == MAX_OVERLAPPING_BATCHES
