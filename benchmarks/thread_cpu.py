"""The CPU time of server workers, split by thread: each worker's main thread (its event loop)
apart from its other threads (the torch thread, which tokenises and runs the forwards, and the
helper pools).

On a machine whose cores the load generator and the event loops share with the forwards, this
split says how much of the CPU the forwards had at all: the served fraction of the ceiling is
that share times how fast the forwards ran in it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ThreadCpu:
    loop_s: float
    other_s: float

    def __sub__(self, earlier: ThreadCpu) -> ThreadCpu:
        return ThreadCpu(self.loop_s - earlier.loop_s, self.other_s - earlier.other_s)


def _cpu_s(stat: Path) -> float:
    # The command name, in parentheses, may hold spaces: count the fields after it.
    fields = stat.read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS_PER_S


def thread_cpu(pids: Iterable[int]) -> ThreadCpu:
    """Summed over the processes; a thread that has exited no longer counts."""
    loop = other = 0.0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                seconds = _cpu_s(task / "stat")
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread exited while the folder was read
            if int(task.name) == pid:
                loop += seconds
            else:
                other += seconds
    return ThreadCpu(loop, other)


class WindowCpu:
    """What the processes' threads spent between two marks: the edges of a measured window."""

    def __init__(self, pids: Iterable[int]) -> None:
        self._pids = list(pids)
        self._marks: list[ThreadCpu] = []

    def mark(self) -> None:
        self._marks.append(thread_cpu(self._pids))

    @property
    def spent(self) -> ThreadCpu:
        opened, closed = self._marks
        return closed - opened
