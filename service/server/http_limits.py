"""Limits on a request's head at the uvicorn port, which nginx enforces only in front of it.

uvicorn's httptools protocol takes a request head of any size (httptools buffers it whole) and
waits for it forever, so whoever reaches the port directly (every container on the api's
networks) could hold memory and connections with huge or endless heads. This protocol answers
431 once a head outgrows `max_head_bytes`, and 408 when one takes longer than `head_timeout_s`
to arrive, counted from the connection (the first request) or from its first byte (the
following ones: uvicorn's keep-alive timeout covers the silence before).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from service.observability.logging import request_id_var

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
# After a refusal, how long the rest of what the client is still sending is read and dropped.
# Closing with unread bytes makes the kernel send a reset, which can discard the refusal
# before the client reads it (nginx's lingering close, for the same reason).
LINGER_S = 2.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes: ClassVar[int] = 64 * 1024
    head_timeout_s: ClassVar[float] = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_bytes = 0
        self._awaiting_head = True
        self._lingering = False
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(
            self.head_timeout_s, self._head_too_slow
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return
        super().data_received(data)
        if not self._awaiting_head or self.transport.is_closing():
            return
        # Bytes received while a head is incomplete; a chunk that also ended the previous
        # request counts whole, so the bound is loose by at most one read.
        self._head_bytes += len(data)
        if self._head_bytes > self.max_head_bytes:
            self._refuse(
                431,
                "request-head-too-large",
                f"the request line and headers exceed {self.max_head_bytes} bytes",
            )

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_head = True
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_too_slow)

    def on_headers_complete(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._awaiting_head and not self.transport.is_closing():
            self._refuse(
                408,
                "request-head-timeout",
                f"the request line and headers took longer than {self.head_timeout_s:g} s",
            )

    def _refuse(self, status: int, slug: str, detail: str) -> None:
        self._cancel_head_timer()
        request_id = uuid.uuid4().hex
        token = request_id_var.set(request_id)
        try:
            body = problem_body(status, slug, _REASONS[status].decode(), detail)
        finally:
            request_id_var.reset(token)
        head = [
            b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
            b"content-type: " + PROBLEM_MEDIA_TYPE.encode(),
            b"content-length: %d" % len(body),
            b"x-request-id: " + request_id.encode(),
            b"connection: close",
        ]
        self.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        # Half-close: the refusal and a FIN go out; what still arrives is dropped until the
        # client closes its side or LINGER_S passes.
        self._lingering = True
        self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def limited_protocol(*, max_head_bytes: int, head_timeout_s: float) -> type[Any]:
    """The protocol class, with these limits, for uvicorn's `Config.http`."""
    return type(
        "LimitedHttpToolsProtocol",
        (LimitedHttpToolsProtocol,),
        {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s},
    )
