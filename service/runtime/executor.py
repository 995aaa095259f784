"""One dedicated thread per process for every torch call.

When torch runs operations from more than one thread, each thread gets its own OpenMP team and
libgomp stops spin-waiting; on 2 cores a batch-1 forward then takes twice as long. Loading,
warm-up and every forward therefore go through this single thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from service.runtime.device import configure_torch_threads

P = ParamSpec("P")
R = TypeVar("R")


class _Threads:
    """Awaitable calls on a thread pool of one's own."""

    _pool: ThreadPoolExecutor

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))


class TorchThread(_Threads):
    def __init__(self, *, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="torch",
            initializer=configure_torch_threads,
            initargs=(threads,),
        )

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DecodeThreads(_Threads):
    """A few threads for decoding that takes real CPU time (images, token counts). On the
    event loop, one request of large PNGs held a worker for seconds, its health probes
    included; Pillow releases the GIL while it decodes, so here the loop keeps answering."""

    def __init__(self, *, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
