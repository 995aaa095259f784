"""The routing policy: its checks, and the canary's share chosen by a stable hash."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.rollouts.policy import (
    NoCanary,
    Route,
    RoutingPolicy,
    aborted,
    bucket,
    promoted,
    route,
)

pytestmark = pytest.mark.unit


def policy(**fields: object) -> RoutingPolicy:
    return RoutingPolicy.model_validate(fields)


def test_the_canary_takes_its_share_of_keys() -> None:
    ten = policy(default=1, canary={"version": 2, "percent": 10})
    routes = [route(ten, "digits", f"request-{i}") for i in range(20_000)]
    share = sum(r.role == "canary" for r in routes) / len(routes)
    assert 0.09 < share < 0.11
    assert {r for r in routes} == {Route(1, "primary"), Route(2, "canary")}


def test_a_key_always_lands_on_the_same_version_and_stays_as_the_share_grows() -> None:
    ten = policy(canary={"version": 2, "percent": 10})
    fifty = policy(canary={"version": 2, "percent": 50})
    keys = [f"user-{i}" for i in range(2_000)]
    at_ten = {k for k in keys if route(ten, "digits", k).role == "canary"}
    assert at_ten == {k for k in keys if route(ten, "digits", k).role == "canary"}
    at_fifty = {k for k in keys if route(fifty, "digits", k).role == "canary"}
    assert at_ten < at_fifty
    # Another model's canary takes another slice of the same keys.
    assert bucket("digits", "user-1") != bucket("minilm", "user-1") or bucket(
        "digits", "user-2"
    ) != bucket("minilm", "user-2")


def test_no_share_and_the_whole_share() -> None:
    keys = [str(i) for i in range(500)]
    none = policy(canary={"version": 2, "percent": 0})
    every = policy(canary={"version": 2, "percent": 100})
    assert all(route(none, "m", k) == Route(None, "primary") for k in keys)
    assert all(route(every, "m", k) == Route(2, "canary") for k in keys)


@pytest.mark.parametrize(
    "fields",
    [
        {"default": 2, "canary": {"version": 2, "percent": 5}},
        {"canary": {"version": 2, "percent": 5}, "shadow": {"version": 2}},
        {"default": 3, "shadow": {"version": 3}},
        {"canary": {"version": 2, "percent": 101}},
        {"canary": {"version": 0, "percent": 1}},
        {"canary": {"version": 2, "percent": 5, "abort_when": {"window_s": 1}}},
        {"mirror": {"version": 2}},
    ],
)
def test_impossible_policies_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        policy(**fields)


def test_promote_and_abort() -> None:
    rollout = policy(default=1, canary={"version": 2, "percent": 10}, shadow={"version": 3})
    assert promoted(rollout) == policy(default=2, shadow={"version": 3})
    assert aborted(rollout) == policy(default=1, shadow={"version": 3})
    assert promoted(policy(canary={"version": 2, "percent": 1}, shadow={"version": 3})).shadow
    with pytest.raises(NoCanary):
        promoted(aborted(rollout))
    with pytest.raises(NoCanary):
        aborted(policy())
    assert policy().is_plain and not aborted(rollout).is_plain
