"""The shadow process: computes one worker's shadow predictions, apart from the worker.

`python -m service.rollouts.shadow_worker IN_FD OUT_FD`, started by `ShadowProcess`. A process,
not a thread: a shadow thread at nice 19 inside the worker still took the GIL between its torch
calls, and whenever the kernel preempted it there (it yields the CPU to everything else), the
worker's event loop waited on the GIL for it. The primary's p99 rose 1.4x in
benchmarks/shadow.py. Here the shadow has an interpreter of its own, one torch thread, the
lowest CPU priority, and nothing it shares with the worker to hold.

Over the two pipes, pickled: first the worker's Settings and the CPUs kept for shadows; then,
per request, `(VersionRef, manifest digest, items)`, answered `("ok", predictions)` or
`("error", message)`.
A version is loaded on its first request, through the worker's own checks (trust, artifact
safety, precision), and loaded again when its manifest changes; one version per model, the
policy's shadow. End of input (the worker closed it, or died) ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from multiprocessing.connection import Connection
from typing import Any

from service.config import Settings
from service.observability.logging import configure_logging
from service.rollouts.shadow_cpus import pin_every_thread
from service.runtime.device import resolve_device
from service.runtime.executor import TorchThread
from service.runtime.model import LoadedModel
from service.runtime.registry import ModelRegistry
from service.runtime.repository import VersionRef

_LOWEST_PRIORITY = 19

Request = tuple[VersionRef, str | None, list[Any]]


class ShadowModels:
    """The versions this process computes: one per model, keyed by its manifest digest."""

    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry
        self._loaded: dict[str, tuple[int, str | None, LoadedModel]] = {}

    async def get(self, ref: VersionRef, digest: str | None) -> LoadedModel:
        held = self._loaded.get(ref.name)
        if held is not None and held[:2] == (ref.version, digest):
            return held[2]
        self._loaded.pop(ref.name, None)  # the old one goes before the new one loads
        state = await self._registry.load_version(ref, digest)
        if state.model is None:
            raise RuntimeError(state.error or "the version did not load")
        self._loaded[ref.name] = (ref.version, digest, state.model)
        return state.model


async def serve(incoming: Connection, outgoing: Connection, settings: Settings) -> None:
    torch_thread = TorchThread(threads=1)
    try:
        device = await torch_thread.run(resolve_device, settings.device)
        models = ShadowModels(ModelRegistry(settings, torch_thread, device))
        while True:
            try:
                ref, digest, items = incoming.recv()
            except EOFError:
                return
            try:
                model = await models.get(ref, digest)
                predictions = await torch_thread.run(model.forward, items) if items else []
            except Exception as e:  # reported to the worker, which counts it as failed
                outgoing.send(("error", f"{type(e).__name__}: {e}"))
            else:
                outgoing.send(("ok", predictions))
    finally:
        torch_thread.shutdown()


def lowest_priority() -> None:
    """SCHED_IDLE where Linux offers it: a worker that wakes preempts this process at once, where
    nice 19 alone still left it a slice of every contended millisecond."""
    os.nice(_LOWEST_PRIORITY)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main(argv: list[str]) -> int:
    lowest_priority()  # before torch starts any thread: they all inherit it
    incoming = Connection(int(argv[0]), writable=False)
    outgoing = Connection(int(argv[1]), readable=False)
    try:
        settings: Settings
        cpus: frozenset[int]
        settings, cpus = incoming.recv()
    except EOFError:
        return 0
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    if cpus:
        pin_every_thread(cpus)  # before the torch thread starts: it inherits them
    asyncio.run(serve(incoming, outgoing, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
