"""Single-flight: identical work in flight at the same time, in one worker, runs once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from service.runtime.errors import ClientDisconnected, DeadlineExceeded

In = TypeVar("In")
Out = TypeVar("Out")

# Failures that belong to the request that led a computation, not to the work itself: a
# waiter that sees one computes for itself instead.
_LEADERS_OWN = (DeadlineExceeded, ClientDisconnected, asyncio.CancelledError)


class SingleFlight(Generic[In, Out]):
    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Out]] = {}

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def run(
        self,
        keys: Sequence[str],
        items: Sequence[In],
        compute: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        deadline: float,
    ) -> tuple[list[Out], list[int]]:
        """Outputs for every item, computing only the keys nobody is computing yet.

        Returns the outputs and the indices this call computed itself (its "leaders"); the
        others were shared with a call already in flight, or with a duplicate in `items`.
        Waiting never outlasts `deadline` (a `time.monotonic()` value).
        """
        loop = asyncio.get_running_loop()
        leaders: list[int] = []
        waits: dict[int, asyncio.Future[Out]] = {}
        mine: dict[str, asyncio.Future[Out]] = {}
        for index, key in enumerate(keys):
            existing = self._inflight.get(key)
            if existing is not None:
                waits[index] = existing
                continue
            future: asyncio.Future[Out] = loop.create_future()
            self._inflight[key] = mine[key] = future
            leaders.append(index)
        try:
            if leaders:
                computed = await compute([items[i] for i in leaders])
                for index, output in zip(leaders, computed, strict=True):
                    mine[keys[index]].set_result(output)
        except BaseException as e:
            for future in mine.values():
                if future.done():
                    continue
                if isinstance(e, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(e)
                    future.exception()  # marked retrieved: nobody may be waiting on it
            raise
        finally:
            for key, future in mine.items():
                if self._inflight.get(key) is future:
                    del self._inflight[key]
        outputs: list[Out] = [None] * len(keys)  # type: ignore[list-item]
        for index in leaders:
            outputs[index] = mine[keys[index]].result()
        retry: list[int] = []
        for index, future in waits.items():
            try:
                outputs[index] = await self._wait(future, deadline)
            except _LEADERS_OWN:
                if not future.done():
                    raise  # our own cancellation, not the leader's
                retry.append(index)
        if retry:
            again, led = await self.run(
                [keys[i] for i in retry], [items[i] for i in retry], compute, deadline=deadline
            )
            for index, output in zip(retry, again, strict=True):
                outputs[index] = output
            leaders = leaders + [retry[j] for j in led]
        return outputs, leaders

    @staticmethod
    async def _wait(future: asyncio.Future[Out], deadline: float) -> Out:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request's deadline passed while it waited")
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=remaining)
        except TimeoutError:
            raise DeadlineExceeded("the request's deadline passed while it waited") from None
