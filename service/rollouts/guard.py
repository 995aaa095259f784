"""The canary guard: aborts a canary by itself when it does worse than its primary.

It reads the series Prometheus scrapes from this server (every worker's, summed), keeps a
snapshot every few seconds, and compares the canary with the primary over the canary's
`abort_when.window_s`: the error ratio (5xx) and the p99 latency. An abort stores the policy
without its canary (every worker and replica follows within ROUTING_REFRESH_S) and names its
reason in the policy's history. Every worker runs a guard; the revision the abort names makes
the first one win and the others a no-op.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from service.observability import metrics
from service.periodic import PeriodicTask
from service.rollouts.policy import Canary, RoutingPolicy, aborted
from service.rollouts.store import StaleRevision
from service.rollouts.table import RoutingTable

logger = logging.getLogger(__name__)

SeriesKey = tuple[str, str, str]  # model, version, role
# A p99 of fewer answers is the slowest of them: one slow request would abort a sound canary.
_MIN_FOR_P99 = 100


@dataclass
class Tally:
    """Cumulative counts of one (model, version, role) at one moment."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound: cumulative count

    def minus(self, earlier: Tally) -> Tally:
        return Tally(
            self.requests - earlier.requests,
            self.errors - earlier.errors,
            {le: n - earlier.buckets.get(le, 0.0) for le, n in self.buckets.items()},
        )

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def quantile(self, q: float) -> float:
        """The upper bound of the bucket that holds quantile `q`, as histogram_quantile reads
        a latency SLO; inf when it is past the last bound."""
        total = self.buckets.get(math.inf, 0.0)
        if total <= 0:
            return 0.0
        for le in sorted(self.buckets):
            if self.buckets[le] >= q * total:
                return le
        return math.inf


def read_tallies() -> dict[SeriesKey, Tally]:
    tallies: dict[SeriesKey, Tally] = defaultdict(Tally)
    for family in metrics.collect("torchdock_routed_requests"):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                tally = tallies[(labels["model_name"], labels["model_version"], labels["role"])]
                tally.requests += sample.value
                if labels["status"].startswith("5"):
                    tally.errors += sample.value
    for family in metrics.collect("torchdock_routed_request_duration_seconds"):
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                labels = sample.labels
                key = (labels["model_name"], labels["model_version"], labels["role"])
                le = float(labels["le"])
                tallies[key].buckets[le] = tallies[key].buckets.get(le, 0.0) + sample.value
    return dict(tallies)


@dataclass(frozen=True)
class Verdict:
    reason: str  # errors or latency
    detail: str


def judge(canary: Canary, ours: Tally, primary: Tally) -> Verdict | None:
    """Whether the canary, over one window, breaks its `abort_when`; None while it holds, or
    while it has answered too few requests to say (its p99 is judged from 100 on)."""
    rule = canary.abort_when
    if rule is None or ours.requests < rule.min_requests:
        return None
    if ours.error_ratio > primary.error_ratio + rule.error_ratio_margin:
        return Verdict(
            "errors",
            f"error ratio {ours.error_ratio:.3f} over {ours.requests:.0f} requests, against"
            f" the primary's {primary.error_ratio:.3f} (margin {rule.error_ratio_margin})",
        )
    judged = max(rule.min_requests, _MIN_FOR_P99)
    if rule.p99_ratio is not None and ours.requests >= judged and primary.requests >= judged:
        ours_p99, primary_p99 = ours.quantile(0.99), primary.quantile(0.99)
        if ours_p99 > rule.p99_ratio * primary_p99:
            return Verdict(
                "latency",
                f"p99 {ours_p99:g} s against the primary's {primary_p99:g} s"
                f" (at most {rule.p99_ratio}x)",
            )
    return None


class CanaryGuard:
    def __init__(
        self,
        table: RoutingTable,
        default_version: Callable[[str], int | None],
        *,
        interval_s: float = 2.0,
    ) -> None:
        self._table = table
        self._default_version = default_version
        self._snapshots: deque[tuple[float, dict[SeriesKey, Tally]]] = deque()
        self._checker = PeriodicTask("canary-guard", interval_s, self.check)

    def start(self) -> None:
        self._checker.start()

    async def stop(self) -> None:
        await self._checker.stop()

    async def check(self, now: float | None = None) -> list[str]:
        """One look at every canary; the models whose canary it aborted."""
        now = time.monotonic() if now is None else now
        tallies = read_tallies()
        self._snapshots.append((now, tallies))
        stopped = []
        for model in sorted(self._table.models()):
            policy = self._table.policy_for(model)
            if policy is None or policy.canary is None or policy.canary.abort_when is None:
                continue
            verdict = self._verdict(model, policy, now, tallies)
            if verdict is not None and await self._abort(model, policy, verdict):
                stopped.append(model)
        longest = max(
            (
                p.canary.abort_when.window_s
                for m in self._table.models()
                if (p := self._table.policy_for(m)) and p.canary and p.canary.abort_when
            ),
            default=0.0,
        )
        while len(self._snapshots) > 1 and self._snapshots[1][0] <= now - longest:
            self._snapshots.popleft()
        return stopped

    def _verdict(
        self, model: str, policy: RoutingPolicy, now: float, tallies: dict[SeriesKey, Tally]
    ) -> Verdict | None:
        canary = policy.canary
        assert canary is not None and canary.abort_when is not None
        primary_version = policy.default or self._default_version(model)
        if primary_version is None:
            return None
        # The newest snapshot at least a window old, else the oldest: a window's worth of
        # change, or all there is since the guard started.
        start = now - canary.abort_when.window_s
        then = self._snapshots[0][1]
        for taken, snapshot in self._snapshots:
            if taken > start:
                break
            then = snapshot
        ours_key = (model, str(canary.version), "canary")
        primary_key = (model, str(primary_version), "primary")
        ours = tallies.get(ours_key, Tally()).minus(then.get(ours_key, Tally()))
        primary = tallies.get(primary_key, Tally()).minus(then.get(primary_key, Tally()))
        return judge(canary, ours, primary)

    async def _abort(self, model: str, policy: RoutingPolicy, verdict: Verdict) -> bool:
        assert policy.canary is not None
        version = policy.canary.version
        without = aborted(policy)
        reason = f"guard: {verdict.reason}: {verdict.detail}"
        if not self._table.shared:
            self._table.override_locally(model, without)
            metrics.CANARY_ABORTS.labels(model, str(version), verdict.reason).inc()
            logger.warning("canary %s/%s aborted in this worker: %s", model, version, reason)
            return True
        try:
            await self._table.save(
                model,
                without,
                action="abort",
                reason=reason,
                expected=self._table.revision(model),
            )
        except StaleRevision:
            return False  # another worker, or an operator, changed it first
        metrics.CANARY_ABORTS.labels(model, str(version), verdict.reason).inc()
        logger.warning("canary %s/%s aborted: %s", model, version, reason)
        return True
