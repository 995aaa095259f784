"""The API-key check of the prediction (and, by setting, metadata) routes.

The prediction routes call `check_api_key` themselves (see `prediction_route`); the metadata
routes depend on `MetadataKey`.

Keys come as `Authorization: Bearer <key>` or `X-API-Key: <key>`; 401 when missing or not
usable, 403 when the key may not use the model, 429 past the key's rate limit. The key's id
goes to the prediction log; the key itself goes nowhere.
"""

from __future__ import annotations

from fastapi import Depends, Request

from service.api.deps import AppState, State
from service.api.problems import Problem
from service.keys.keys import ApiKey
from service.observability import metrics

# Where the caller's key id waits in the ASGI scope's state, for the prediction-log row.
API_KEY_STATE = "torchdock_api_key_id"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="torchdock"'}


def _presented(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    return request.headers.get("x-api-key")


async def check_api_key(request: Request, state: AppState) -> ApiKey | None:
    if state.key_ring is None:  # API_KEYS=off
        return None
    settings = state.settings
    presented = _presented(request)
    if presented is None:
        metrics.API_KEY_REJECTIONS.labels("missing").inc()
        raise Problem(
            401,
            "api-key-required",
            "API key required",
            "send an API key as `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            headers=_CHALLENGE,
        )
    if not state.key_ring.loaded:
        raise Problem(
            503,
            "api-keys-unavailable",
            "API keys unavailable",
            "the keys could not be read yet; retry shortly",
            headers={"Retry-After": "5"},
        )
    key = state.key_ring.verify(presented)
    if key is None:
        metrics.API_KEY_REJECTIONS.labels("invalid").inc()
        raise Problem(
            401,
            "invalid-api-key",
            "Invalid API key",
            "the API key is unknown, revoked or expired",
            headers={"WWW-Authenticate": 'Bearer realm="torchdock", error="invalid_token"'},
        )
    model = request.path_params.get("name")
    if model is not None and not key.allows(model):
        metrics.api_key_requests(key.name, "forbidden").inc()
        raise Problem(
            403, "model-not-allowed", "Model not allowed", f"this key may not use model {model!r}"
        )
    limit = key.rate_limit or settings.api_key_rate_limit
    if limit is not None and state.rate_limiter is not None:
        decision = await state.rate_limiter.hit(key.key_id, limit)
        if not decision.allowed:
            metrics.api_key_requests(key.name, "rate_limited").inc()
            if not decision.counted:
                raise Problem(
                    503,
                    "rate-limit-unavailable",
                    "Rate limit unavailable",
                    "rate limits cannot be counted right now, and they fail closed",
                    headers={"Retry-After": str(decision.retry_after_s)},
                )
            raise Problem(
                429,
                "rate-limited",
                "Too many requests",
                f"this key exceeds its rate limit of {limit}",
                headers={"Retry-After": str(decision.retry_after_s)},
            )
        outcome = "allowed" if decision.counted else "unlimited"
    else:
        outcome = "allowed"
    metrics.api_key_requests(key.name, outcome).inc()
    request.scope.setdefault("state", {})[API_KEY_STATE] = key.key_id
    return key


async def _check_metadata(request: Request, state: State) -> ApiKey | None:
    if not state.settings.api_keys_protect_metadata:
        return None
    return await check_api_key(request, state)


MetadataKey = Depends(_check_metadata)
