"""A circuit breaker: stop calling a dependency that keeps failing, then probe it again."""

from __future__ import annotations

import time
from enum import Enum


class BreakerState(Enum):
    CLOSED = 0  # calls go through
    OPEN = 1  # calls are skipped until the reset timeout passes
    HALF_OPEN = 2  # one probe call is allowed through


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int = 3, reset_timeout_s: float = 5.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self._failures = 0
        self._opened_at = 0.0
        self._state = BreakerState.CLOSED

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._reset_due():
            return BreakerState.HALF_OPEN
        return self._state

    def _reset_due(self) -> bool:
        return time.monotonic() - self._opened_at >= self.reset_timeout_s

    def allow(self) -> bool:
        """Whether to make the call now. In half-open state, only the first caller probes."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN and self._reset_due():
            self._state = BreakerState.HALF_OPEN
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = time.monotonic()
