"""The prediction cache: one entry per instance, in Redis, never the reason a request fails.

"Not configured" is `NullCache`. `RedisCache` gives every call a short timeout and sits behind
a circuit breaker, so that a dead or slow Redis costs a request at most one timeout, and then
nothing until the breaker probes again.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Protocol, cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from service.observability import metrics
from service.storage.breaker import BreakerState, CircuitBreaker

logger = logging.getLogger(__name__)

KEY_PREFIX = "torchdock:pred:v1"


def cache_key(
    *, model: str, version: int, artifact_sha256: str, parameters: bytes, instance: bytes
) -> str:
    """A key per instance. The model and version stay readable (for purging by pattern); the
    artifact's sha256 in the digest keeps a rebuilt artifact under the same version apart."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (artifact_sha256.encode(), parameters, instance):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return f"{KEY_PREFIX}:{model}:{version}:{digest.hexdigest()}"


def purge_pattern(model: str | None = None, version: int | None = None) -> str:
    if model is None:
        return f"{KEY_PREFIX}:*"
    if version is None:
        return f"{KEY_PREFIX}:{model}:*"
    return f"{KEY_PREFIX}:{model}:{version}:*"


class PredictionCache(Protocol):
    enabled: bool

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, entries: dict[str, bytes], *, ttl_s: int) -> None: ...

    async def close(self) -> None: ...


class NullCache:
    enabled = False

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [None] * len(keys)

    async def set_many(self, entries: dict[str, bytes], *, ttl_s: int) -> None:
        return None

    async def close(self) -> None:
        return None


class RedisCache:
    enabled = True

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 0.05,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self.breaker = breaker or CircuitBreaker()
        self._publish_state()

    def _publish_state(self) -> None:
        metrics.CACHE_BREAKER_STATE.set(self.breaker.state.value)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys or not self.breaker.allow():
            metrics.CACHE_SKIPPED.labels("get").inc()
            return [None] * len(keys)
        started = time.perf_counter()
        try:
            values = cast(list[bytes | None], await self._client.mget(list(keys)))
        except (RedisError, OSError) as e:
            self._failed("get", e)
            return [None] * len(keys)
        finally:
            metrics.CACHE_LATENCY.labels("get").observe(time.perf_counter() - started)
        self._succeeded()
        return values

    async def set_many(self, entries: dict[str, bytes], *, ttl_s: int) -> None:
        if not entries or not self.breaker.allow():
            metrics.CACHE_SKIPPED.labels("set").inc()
            return
        started = time.perf_counter()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, value in entries.items():
                    pipe.set(key, value, ex=ttl_s)
                await pipe.execute()
        except (RedisError, OSError) as e:
            self._failed("set", e)
            return
        finally:
            metrics.CACHE_LATENCY.labels("set").observe(time.perf_counter() - started)
        self._succeeded()

    def _succeeded(self) -> None:
        if self.breaker.state is not BreakerState.CLOSED:
            logger.info("redis is back: cache breaker closed")
        self.breaker.record_success()
        self._publish_state()

    def _failed(self, operation: str, error: Exception) -> None:
        metrics.CACHE_ERRORS.labels(operation).inc()
        was = self.breaker.state
        self.breaker.record_failure()
        if self.breaker.state is BreakerState.OPEN and was is not BreakerState.OPEN:
            logger.warning("redis failing (%s): cache breaker open", type(error).__name__)
        self._publish_state()

    async def close(self) -> None:
        await self._client.aclose()


async def purge(url: str, *, model: str | None = None, version: int | None = None) -> int:
    """Delete every cached prediction of a model (version), or all; returns how many."""
    client = redis.Redis.from_url(url)
    removed = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=purge_pattern(model, version), count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += await client.unlink(*batch)
                batch.clear()
        if batch:
            removed += await client.unlink(*batch)
    finally:
        await client.aclose()
    return removed
