"""Which loaded version serves a prediction request: the one it names, or the one its model's
routing policy picks (a canary for a stable share of routing keys, else the primary)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from service.api.deps import AppState
from service.observability.logging import request_id_var
from service.rollouts.policy import Role, RoutingPolicy, route
from service.runtime.errors import ModelNotFound, ModelNotReady
from service.runtime.model import LoadedModel
from service.runtime.repository import version_number

# A client's own key (a user or session id): the same key always lands on the same version.
ROUTING_KEY_HEADER = "x-routing-key"


@dataclass(frozen=True)
class Routed:
    model: LoadedModel
    role: Role
    policy: RoutingPolicy | None  # None: no policy applies (none set, or a named version)
    primary_version: int | None = None  # for a canary: the version it stands in for


def parse_version(version: str | None, *, model: str) -> int | None:
    if version is None:
        return None
    number = version_number(version)
    if number is None:
        raise ModelNotFound(f"model {model!r} has no version {version!r}")
    return number


def resolve_model(state: AppState, name: str, version: str | None) -> LoadedModel:
    return state.registry.get(name, parse_version(version, model=name))


def routing_key(request: Request) -> str:
    return request.headers.get(ROUTING_KEY_HEADER) or request_id_var.get() or ""


def routed_model(state: AppState, request: Request, name: str, version: str | None) -> Routed:
    if version is not None:
        return Routed(resolve_model(state, name, version), "primary", None)
    policy = state.routing.policy_for(name)
    if policy is None or policy.is_plain:
        return Routed(state.registry.get(name), "primary", None)
    chosen = route(policy, name, routing_key(request))
    if chosen.role == "canary":
        try:
            canary = state.registry.get(name, chosen.version)
        except (ModelNotFound, ModelNotReady):
            pass  # not loaded (yet, or any more) here: the primary serves
        else:
            primary = policy.default or state.registry.default_version(name)
            return Routed(canary, "canary", policy, primary)
    return Routed(state.registry.get(name, policy.default), "primary", policy)
