"""Spread keep-alive connections evenly over gunicorn's workers.

Every worker listens on the socket it inherited from the master, and the event loop that wakes
first takes every pending connection in one go. A burst of N connections (a load balancer's
keep-alive pool, a benchmark's clients) therefore lands mostly on one worker: 30 of 32 was
measured here. With HTTP/1.1 each connection carries at most one request at a time, so that
worker's queue forms full batches while the other worker's torch thread runs batches of one or
two: on 2 CPUs, concurrency 32 served 191 req/s against 255-318 with balanced workers.

So a worker accepts one connection at a time and then waits a moment that grows with the
connections it already holds, so the worker holding fewer wins the next race. The wait is capped:
a worker that holds many connections still accepts at a steady rate.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from uvicorn.config import Config
from uvicorn.server import Server

logger = logging.getLogger(__name__)

# Long enough to outlast an event loop's wake-up jitter on a busy machine, short enough that a
# new connection waits at most a few milliseconds.
WAIT_PER_CONNECTION_S = 0.0005
MAX_WAIT_S = 0.005
ACCEPT_ERROR_BACKOFF_S = 0.1


def accept_wait_s(open_connections: int) -> float:
    return min(open_connections * WAIT_PER_CONNECTION_S, MAX_WAIT_S)


class FairAcceptServer(Server):
    """uvicorn's server with an accept loop that yields to less-loaded sibling workers."""

    def __init__(self, config: Config, *, fair: bool) -> None:
        super().__init__(config)
        self._fair = fair
        self._accept_tasks: list[asyncio.Task[None]] = []

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not self._fair or sockets is None or self.config.ssl is not None:
            await super().startup(sockets)
            return
        # An empty list runs the lifespan and marks the server started, with no listener of
        # uvicorn's own: the accept loops below are the listeners.
        await super().startup([])
        if not self.started or self.should_exit:
            return
        for sock in sockets:
            sock.setblocking(False)
            self._accept_tasks.append(asyncio.create_task(self._accept_loop(sock)))

    def _protocol(self) -> asyncio.Protocol:
        protocol_class: Any = self.config.http_protocol_class
        protocol: asyncio.Protocol = protocol_class(
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            _loop=asyncio.get_running_loop(),
        )
        return protocol

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(listener)
            except OSError as exc:  # EMFILE and the like: back off, do not spin
                logger.warning("accept failed: %s", exc)
                await asyncio.sleep(ACCEPT_ERROR_BACKOFF_S)
                continue
            try:
                await loop.connect_accepted_socket(self._protocol, connection)
            except OSError:  # the client went away between accept and setup
                connection.close()
            await asyncio.sleep(accept_wait_s(len(self.server_state.connections)))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for task in self._accept_tasks:
            task.cancel()
        await asyncio.gather(*self._accept_tasks, return_exceptions=True)
        await super().shutdown(sockets)
