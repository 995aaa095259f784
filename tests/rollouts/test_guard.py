"""The canary guard's judgement, on tallies and on this process's own metrics."""

from __future__ import annotations

import math

import pytest

from service.config import Settings
from service.observability import metrics
from service.rollouts.guard import CanaryGuard, Tally, judge
from service.rollouts.policy import Canary, RoutingPolicy
from service.rollouts.table import RoutingTable

pytestmark = pytest.mark.unit

CANARY = Canary(version=2, percent=10)  # the default abort_when: 5% margin, p99 at most 2x


def latencies(*seconds: float) -> dict[float, float]:
    bounds = (0.01, 0.05, 0.1, 0.5, math.inf)
    return {le: float(sum(s <= le for s in seconds)) for le in bounds}


def test_a_canary_with_more_errors_than_the_margin_is_judged() -> None:
    primary = Tally(requests=100, errors=1, buckets=latencies(*[0.01] * 100))
    fine = Tally(requests=40, errors=2, buckets=latencies(*[0.01] * 40))
    failing = Tally(requests=40, errors=8, buckets=latencies(*[0.01] * 40))
    assert judge(CANARY, fine, primary) is None
    verdict = judge(CANARY, failing, primary)
    assert verdict is not None and verdict.reason == "errors"
    assert "0.200" in verdict.detail


def test_too_few_requests_say_nothing() -> None:
    primary = Tally(requests=100, errors=0, buckets=latencies(*[0.01] * 100))
    assert judge(CANARY, Tally(requests=19, errors=19), primary) is None


def test_a_slow_canary_is_judged_on_its_p99_once_it_has_one() -> None:
    primary = Tally(requests=100, errors=0, buckets=latencies(*[0.01] * 100))
    slow = Tally(requests=100, errors=0, buckets=latencies(*[0.01] * 95, *[0.5] * 5))
    verdict = judge(CANARY, slow, primary)
    assert verdict is not None and verdict.reason == "latency"
    # Of 50 answers the p99 is the slowest one: one slow request says nothing yet.
    one_slow = Tally(requests=50, errors=0, buckets=latencies(*[0.01] * 49, 0.5))
    assert judge(CANARY, one_slow, primary) is None
    unguarded = CANARY.model_copy(update={"abort_when": None})
    assert judge(unguarded, slow, primary) is None


def test_quantiles_read_like_histogram_quantile() -> None:
    tally = Tally(requests=100, buckets=latencies(*[0.01] * 98, 0.3, 2.0))
    assert tally.quantile(0.5) == 0.01
    assert tally.quantile(0.99) == 0.5
    assert tally.quantile(1.0) == math.inf
    assert Tally().quantile(0.99) == 0.0


async def test_the_guard_aborts_from_the_served_metrics_within_its_window() -> None:
    model = "guarded-model"  # labels of its own in this process's registry
    policy = RoutingPolicy(
        default=1,
        canary={"version": 2, "percent": 50, "abort_when": {"window_s": 10, "min_requests": 20}},
    )
    settings = Settings(_env_file=None, model_settings={model: {"routing": policy}})  # type: ignore[call-arg]
    table = RoutingTable(settings, None)
    guard = CanaryGuard(table, lambda name: 1)

    def serve(version: str, role: str, ok: int, failed: int) -> None:
        for status, count in ((200, ok), (500, failed)):
            metrics.routed_requests(model, version, role, status).inc(count)
            for _ in range(count):
                metrics.routed_latency(model, version, role).observe(0.01)

    assert await guard.check(now=0.0) == []
    # Thirty failures since the first look, none on the primary: beyond any margin.
    serve("2", "canary", ok=0, failed=30)
    assert await guard.check(now=5.0) == [model]
    assert table.policy_for(model) == RoutingPolicy(default=1)

    table.override_locally(model, policy)
    assert await guard.check(now=20.0) == []
    serve("1", "primary", ok=100, failed=0)
    serve("2", "canary", ok=90, failed=10)  # 10%: beyond the 5% margin
    assert await guard.check(now=25.0) == [model]
    assert table.policy_for(model).canary is None  # type: ignore[union-attr]
