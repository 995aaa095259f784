"""A lean closed-loop HTTP/1.1 load generator: N keep-alive connections, one request in flight
each. It costs the server's machine far less CPU than a general-purpose client, and it reports
its own CPU use so that the benchmark can account for it."""

from __future__ import annotations

import asyncio
import itertools
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    seconds: float
    requests: int
    errors: int
    latencies_s: list[float]
    client_cpu_s: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1000 if self.latencies_s else float("nan")

    @property
    def p99_ms(self) -> float:
        return self.percentile(0.99) * 1000


def build_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(
    host: str,
    port: int,
    requests: itertools.cycle[bytes],
    warm_until: float,
    stop_at: float,
    latencies: list[float],
    counts: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            started = time.perf_counter()
            if started >= stop_at:
                return
            writer.write(next(requests))
            status_line = await reader.readuntil(b"\r\n")
            headers = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in headers.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if started < warm_until:
                continue
            latencies.append(time.perf_counter() - started)
            counts[0] += 1
            if status_line[9:12] != b"200":
                counts[1] += 1
    finally:
        writer.close()


async def run_load(
    *,
    host: str,
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    warmup_s: float = 1.0,
    on_window_edge: Callable[[], None] | None = None,
) -> LoadResult:
    """`on_window_edge` is called as the measured window opens and as it closes (after the
    warm-up, and `seconds` later), on this event loop, so that a caller can sample what the
    server spent over exactly the window the figures are of."""
    latencies: list[float] = []
    counts = [0, 0]
    cycle = itertools.cycle(requests)
    client_cpu: list[float] = []

    def edge() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        client_cpu.append(usage.ru_utime + usage.ru_stime)
        if on_window_edge is not None:
            on_window_edge()

    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    warm_until, stop_at = now + warmup_s, now + warmup_s + seconds
    loop.call_later(warmup_s, edge)
    closing = loop.call_later(warmup_s + seconds, edge)
    await asyncio.gather(
        *(
            _connection(host, port, cycle, warm_until, stop_at, latencies, counts)
            for _ in range(concurrency)
        )
    )
    if len(client_cpu) < 2:  # every connection saw the end before the timer fired
        closing.cancel()
        edge()
    cpu = client_cpu[1] - client_cpu[0]
    return LoadResult(concurrency, seconds, counts[0], counts[1], latencies, cpu)


def measure(
    port: int,
    requests: Sequence[bytes],
    concurrency: int,
    seconds: float,
    *,
    warmup_s: float = 1.0,
    on_window_edge: Callable[[], None] | None = None,
) -> LoadResult:
    """One point of a benchmark against a server on 127.0.0.1, from synchronous code."""
    return asyncio.run(
        run_load(
            host="127.0.0.1",
            port=port,
            requests=requests,
            concurrency=concurrency,
            seconds=seconds,
            warmup_s=warmup_s,
            on_window_edge=on_window_edge,
        )
    )
