"""CPUs kept for the shadow processes (`SHADOW_CPUS`), apart from the ones the workers serve on.

At the lowest priority a shadow still ran on the primary's cores: on two busy cores it took
whichever one was free at the moment a worker woke, and the worker came back to caches full of
the shadow's data (benchmarks/shadow.py: the primary's p99 0.96-1.24x, run to run). Cores of
its own are what keeps a slow shadow off the primary's latency, as Kubernetes' static CPU
manager policy keeps one pod's cores from another's.

A count, not a list of CPU numbers: a container or a pod is handed its cpuset when it starts,
so only the server knows which CPUs it has. The highest-numbered go to the shadows.
"""

from __future__ import annotations

import contextlib
import logging
import os

from service.config import available_cpus

logger = logging.getLogger(__name__)


def split_cpus(allowed: frozenset[int], shadow_count: int) -> tuple[frozenset[int], frozenset[int]]:
    """(serving, shadow): the `shadow_count` highest-numbered CPUs of `allowed` are the shadows'."""
    if shadow_count >= len(allowed):
        raise ValueError(
            f"SHADOW_CPUS={shadow_count} takes every CPU this server may use ({sorted(allowed)}):"
            " none is left to serve"
        )
    ordered = sorted(allowed)
    cut = len(ordered) - shadow_count
    return frozenset(ordered[:cut]), frozenset(ordered[cut:])


def keep_cpus_for_shadows(shadow_count: int) -> frozenset[int]:
    """Moves this worker onto its serving CPUs; returns the CPUs left to its shadow process."""
    if shadow_count == 0:
        return frozenset()
    allowed = frozenset(os.sched_getaffinity(0))
    serving, shadow = split_cpus(allowed, shadow_count)
    pin_every_thread(serving)
    if (quota_cpus := available_cpus()) < len(allowed):
        logger.warning(
            "SHADOW_CPUS under a CPU quota: the shadows' time counts against the workers' quota."
            " Give the container CPUs of its own (a cpuset) instead.",
            extra={"cpus": sorted(allowed), "quota_cpus": quota_cpus},
        )
    return shadow


def pin_every_thread(cpus: frozenset[int]) -> None:
    """This process onto `cpus`, every thread of it, and every thread it starts from now on."""
    # sched_setaffinity(0) moves the calling thread alone, and importing torch has already
    # started others (a thread pool that stayed on every CPU, which a test caught). Threads
    # started later inherit from the one that starts them.
    for thread in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.sched_setaffinity(int(thread), cpus)
