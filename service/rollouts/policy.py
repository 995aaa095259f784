"""Which version serves a request that names none, and which version shadows it.

A policy is `{"default": 1, "canary": {"version": 2, "percent": 10}, "shadow": {"version": 3}}`.
The canary's share is chosen by a stable hash of the routing key (X-Routing-Key, else the
request id), so that a retry with the same key lands on the same version, and a key moves
to the canary only when the share grows, never back and forth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["primary", "canary", "shadow"]
# Shares are whole basis points: 0.01% is the finest canary.
_BUCKETS = 10_000


class AbortWhen(BaseModel):
    """When the guard aborts a canary by itself: over the last `window_s`, once the canary has
    answered `min_requests`, its error ratio exceeds the primary's by more than
    `error_ratio_margin`, or its p99 latency is above `p99_ratio` times the primary's (once
    both have answered at least 100, and `min_requests`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: Annotated[float, Field(ge=5, le=3600)] = 60.0
    min_requests: Annotated[int, Field(ge=1)] = 20
    error_ratio_margin: Annotated[float, Field(ge=0, le=1)] = 0.05
    p99_ratio: Annotated[float, Field(ge=1)] | None = 2.0


class Canary(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]
    percent: Annotated[float, Field(ge=0, le=100)]
    # On by default: a canary nobody watches is what this guards against.
    abort_when: AbortWhen | None = AbortWhen()


class Shadow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Annotated[int, Field(ge=1)]


class RoutingPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="the primary version; unset: the model's default version"
    )
    canary: Canary | None = None
    shadow: Shadow | None = None

    @model_validator(mode="after")
    def _distinct_versions(self) -> Self:
        if self.canary and self.canary.version == self.default:
            raise ValueError("the canary must be another version than the default")
        if self.shadow and self.shadow.version in (self.default, self.canary_version):
            raise ValueError("the shadow must be a version that serves no traffic")
        return self

    @property
    def canary_version(self) -> int | None:
        return self.canary.version if self.canary else None

    @property
    def is_plain(self) -> bool:
        """Serves like no policy at all: every request on the default version, no shadow."""
        return self.default is None and not self.canary and not self.shadow


@dataclass(frozen=True, slots=True)
class Route:
    version: int | None  # None: the model's default version
    role: Role


def bucket(model: str, routing_key: str) -> int:
    digest = hashlib.blake2b(f"{model}\x00{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def route(policy: RoutingPolicy, model: str, routing_key: str) -> Route:
    canary = policy.canary
    if canary is not None and bucket(model, routing_key) < round(canary.percent * 100):
        return Route(canary.version, "canary")
    return Route(policy.default, "primary")


class NoCanary(ValueError):
    """Promote and abort act on a canary, and the policy has none."""


def promoted(policy: RoutingPolicy) -> RoutingPolicy:
    """The canary becomes the default, for every request; a shadow of another version stays."""
    if policy.canary is None:
        raise NoCanary("there is no canary to promote")
    version = policy.canary.version
    shadow = policy.shadow if policy.shadow and policy.shadow.version != version else None
    return RoutingPolicy(default=version, shadow=shadow)


def aborted(policy: RoutingPolicy) -> RoutingPolicy:
    """Every request back on the default version; the shadow stays."""
    if policy.canary is None:
        raise NoCanary("there is no canary to abort")
    return policy.model_copy(update={"canary": None})
