"""Single-flight: identical work in flight at the same time, in one worker, runs once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")


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
    ) -> tuple[list[Out], list[int]]:
        """Outputs for every item, computing only the keys nobody is computing yet.

        Returns the outputs and the indices this call computed itself (its "leaders"); the
        others were shared with a call already in flight, or with a duplicate in `items`.
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
        for index, future in waits.items():
            outputs[index] = await asyncio.shield(future)
        return outputs, leaders
