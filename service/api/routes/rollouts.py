"""A model's routing policy (canary and shadow), behind the admin token like the repository API.

`GET/PUT /v2/repository/models/{name}/routing`, `POST .../routing/promote` and `.../abort`.
The policy is stored in Postgres; every worker and replica follows it within
ROUTING_REFRESH_S. A change may name the `revision` it replaces: if another change came first,
it is refused (409) rather than overwriting it unseen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from service.api.admin_auth import require_admin_token
from service.api.deps import AppState, State
from service.api.inference import json_response
from service.api.problems import Problem
from service.rollouts.policy import NoCanary, RoutingPolicy, aborted, promoted
from service.rollouts.store import StaleRevision
from service.rollouts.table import RolloutsUnavailable
from service.runtime.errors import ModelNotFound

router = APIRouter(prefix="/v2/repository/models/{name}/routing", tags=["rollouts"])
Authorization = Annotated[str | None, Header()]


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: RoutingPolicy
    revision: Annotated[int, Field(ge=0)] | None = None


class CanaryChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] | None = None
    revision: Annotated[int, Field(ge=0)] | None = None


def _view(state: AppState, name: str) -> dict[str, Any]:
    policy = state.routing.policy_for(name)
    revision = state.routing.revision(name)
    source = "stored" if revision else "settings" if policy is not None else "none"
    return {
        "model": name,
        "policy": policy.model_dump(mode="json", exclude_none=True) if policy else None,
        "revision": revision,
        "source": source,
    }


def _check_versions(state: AppState, name: str, policy: RoutingPolicy) -> None:
    entry = state.registry.entries.get(name)
    if entry is None:
        raise ModelNotFound(f"model {name!r} is not served here")
    named = {policy.default, policy.canary_version, policy.shadow and policy.shadow.version}
    unknown = sorted(v for v in named if isinstance(v, int) and v not in entry.versions)
    if unknown:
        raise Problem(
            409,
            "unknown-version",
            "Unknown version",
            f"model {name!r} has no version {', '.join(map(str, unknown))} here",
        )


async def _save(
    state: AppState,
    name: str,
    policy: RoutingPolicy,
    *,
    action: str,
    reason: str | None,
    revision: int | None,
) -> Response:
    try:
        await state.routing.save(name, policy, action=action, reason=reason, expected=revision)
    except RolloutsUnavailable as e:
        raise Problem(503, "rollouts-unavailable", "Rollouts unavailable", str(e)) from None
    except StaleRevision as e:
        raise Problem(409, "stale-revision", "Stale revision", str(e)) from None
    return json_response(_view(state, name))


@router.get("", summary="A model's routing policy (admin)")
async def get_routing(name: str, state: State, authorization: Authorization = None) -> Response:
    require_admin_token(state.settings, authorization)
    if name not in state.registry.entries:
        raise ModelNotFound(f"model {name!r} is not served here")
    return json_response(_view(state, name))


@router.put("", summary="Set a model's routing policy: canary and shadow (admin)")
async def put_routing(
    name: str, change: PolicyChange, state: State, authorization: Authorization = None
) -> Response:
    require_admin_token(state.settings, authorization)
    _check_versions(state, name, change.policy)
    return await _save(
        state, name, change.policy, action="set", reason=None, revision=change.revision
    )


def _canary_route(action: str, change: Callable[[RoutingPolicy], RoutingPolicy]) -> None:
    async def endpoint(
        name: str,
        state: State,
        body: CanaryChange | None = None,
        authorization: Authorization = None,
    ) -> Response:
        require_admin_token(state.settings, authorization)
        body = body or CanaryChange()
        current = state.routing.policy_for(name)
        try:
            policy = change(current or RoutingPolicy())
        except NoCanary as e:
            raise Problem(409, "no-canary", "No canary", str(e)) from None
        return await _save(
            state, name, policy, action=action, reason=body.reason, revision=body.revision
        )

    router.add_api_route(
        f"/{action}",
        endpoint,
        methods=["POST"],
        summary=f"{action.capitalize()} the model's canary (admin)",
        name=f"{action}_canary",
    )


_canary_route("promote", promoted)
_canary_route("abort", aborted)
