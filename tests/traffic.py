"""Background traffic for tests under load: threads that each keep their own connection open and
send requests until stopped, at a steady total rate or as fast as the answers come.

Subclasses say how a thread connects (`connect`) and what one request is and records (`send`);
starting, pacing and stopping are here once.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Self

import httpx


class Traffic(ABC):
    def __init__(self, *, threads: int, rate: float | None = None) -> None:
        # Each thread waits threads/rate between its requests, so that all together send `rate`.
        self.interval = threads / rate if rate else 0.0
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    @abstractmethod
    def connect(self) -> httpx.Client: ...

    @abstractmethod
    def send(self, client: httpx.Client, thread: int) -> None:
        """One request, its outcome recorded (under `self.lock`)."""

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self, thread: int) -> None:
        with self.connect() as client:
            due = time.monotonic()
            while not self._stop.is_set():
                self.send(client, thread)
                if self.interval:
                    due += self.interval
                    time.sleep(max(0.0, due - time.monotonic()))
