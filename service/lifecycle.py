"""Graceful shutdown: on SIGTERM turn not-ready first, then let the server drain and exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self, *, drain_delay_s: float) -> None:
        self.drain_delay_s = drain_delay_s
        self.draining = False
        self._previous: Any = None

    def begin_drain(self) -> None:
        if not self.draining:
            self.draining = True
            logger.info("draining: readiness now fails; in-flight requests will finish")

    def install_sigterm_hook(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wrap the server's SIGTERM handler (uvicorn's) so that readiness fails before it runs.

        With a drain delay, the server keeps accepting for that long, so that load balancers
        see the failing readiness and stop sending before the listener closes.
        """
        if threading.current_thread() is not threading.main_thread():
            return  # in-process test clients: there is no server signal handler to wrap
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        self._previous = previous

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.begin_drain()
            forward: Callable[[], None] = lambda: previous(signum, frame)  # noqa: E731
            if self.drain_delay_s > 0:
                loop.call_soon_threadsafe(loop.call_later, self.drain_delay_s, forward)
            else:
                forward()

        signal.signal(signal.SIGTERM, on_sigterm)

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
