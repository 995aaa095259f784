"""Per-key rate limits that every replica shares: counters in Redis, through `limits`.

A sliding window counter (two Redis counters per key) smooths the edges of fixed windows at a
fraction of a moving window's cost. When Redis cannot count (down, slow, or its breaker open),
RATE_LIMIT_FAILURE decides: `open` lets the request through, `closed` answers 503.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from service.storage.breaker import CircuitBreaker

logger = logging.getLogger(__name__)


def check_rate_limit(text: str) -> RateLimitItem:
    """The limit that `text` ('20/second', '1000 per hour') names; ValueError otherwise."""
    return parse(text)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0
    counted: bool = True  # False: Redis could not count, and the failure mode decided


class KeyRateLimiter:
    def __init__(
        self,
        redis_url: str | None,
        *,
        timeout_s: float,
        fail_open: bool,
        breaker: CircuitBreaker,
    ) -> None:
        storage: Storage
        if redis_url is None:
            # Without Redis, each worker counts alone: the limit holds per worker, not overall.
            logger.warning("rate limits: no REDIS_URL; each worker counts on its own")
            storage = MemoryStorage()
        else:
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix="torchdock:ratelimit",
                wrap_exceptions=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
        self._limiter = SlidingWindowCounterRateLimiter(storage)
        self._fail_open = fail_open
        self._breaker = breaker
        self._items: dict[str, RateLimitItem] = {}

    async def hit(self, key_id: str, limit: str) -> Decision:
        item = self._items.get(limit) or self._items.setdefault(limit, parse(limit))
        if not self._breaker.allow():
            return Decision(self._fail_open, retry_after_s=1, counted=False)
        try:
            allowed = await self._limiter.hit(item, key_id)
            retry = 0
            if not allowed:
                stats = await self._limiter.get_window_stats(item, key_id)
                retry = max(1, math.ceil(stats.reset_time - time.time()))
        except Exception as e:  # limits wraps every storage error in its own type
            self._breaker.record_failure()
            logger.warning("rate limits: Redis cannot count (%s); failing %s", e,
                           "open" if self._fail_open else "closed")  # fmt: skip
            return Decision(self._fail_open, retry_after_s=1, counted=False)
        self._breaker.record_success()
        return Decision(allowed, retry_after_s=retry)
