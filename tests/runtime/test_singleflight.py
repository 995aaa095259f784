"""Single-flight: shared work runs once; a leader's own failures do not fail its waiters."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.runtime.errors import DeadlineExceeded, InferenceFailed
from service.runtime.singleflight import SingleFlight

pytestmark = pytest.mark.unit


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


class Work:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_with: BaseException | None = None

    async def __call__(self, items: list[str]) -> list[str]:
        self.calls.append(items)
        await self.release.wait()
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return [f"out-{i}" for i in items]


async def test_identical_work_runs_once() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    tasks = [
        asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later())) for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    work.release.set()
    results = await asyncio.gather(*tasks)
    assert work.calls == [["a"]]
    assert all(outputs == ["out-a"] for outputs, _ in results)
    assert sum(len(leaders) for _, leaders in results) == 1
    assert flight.inflight == 0


async def test_duplicates_within_one_call_are_computed_once() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    work.release.set()
    outputs, leaders = await flight.run(["k1", "k2", "k1"], ["a", "b", "a"], work, deadline=later())
    assert work.calls == [["a", "b"]]
    assert outputs == ["out-a", "out-b", "out-a"]
    assert leaders == [0, 1]


async def test_a_failure_of_the_work_reaches_every_waiter() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    work.fail_with = InferenceFailed("boom")
    tasks = [
        asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later())) for _ in range(3)
    ]
    await asyncio.sleep(0.01)
    work.release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert flight.inflight == 0


async def test_the_leaders_deadline_is_not_the_waiters() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    work.fail_with = DeadlineExceeded("the leader's own deadline")
    leader = asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later()))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later()))
    await asyncio.sleep(0.01)
    work.release.set()
    with pytest.raises(DeadlineExceeded):
        await leader
    outputs, leaders = await waiter  # it computed for itself instead
    assert outputs == ["out-a"]
    assert leaders == [0]
    assert len(work.calls) == 2


async def test_a_cancelled_leader_does_not_cancel_its_waiters() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later()))
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later()))
    await asyncio.sleep(0.01)
    leader.cancel()
    await asyncio.sleep(0.01)
    work.release.set()
    outputs, _ = await waiter
    assert outputs == ["out-a"]


async def test_a_waiter_gives_up_at_its_own_deadline() -> None:
    flight: SingleFlight[str, str] = SingleFlight()
    work = Work()
    leader = asyncio.create_task(flight.run(["k"], ["a"], work, deadline=later()))
    await asyncio.sleep(0.01)
    with pytest.raises(DeadlineExceeded):
        await flight.run(["k"], ["a"], work, deadline=later(0.05))
    work.release.set()
    assert (await leader)[0] == ["out-a"]
