"""The admin token: a bearer token compared in constant time."""

from __future__ import annotations

import hmac

from service.api.problems import Problem
from service.config import Settings


def require_admin_token(settings: Settings, authorization: str | None) -> None:
    token = settings.admin_token
    if token is None:
        raise Problem(403, "admin-disabled", "Forbidden", "this route needs ADMIN_TOKEN to be set")
    scheme, _, given = (authorization or "").partition(" ")
    expected = token.get_secret_value().encode()
    # Constant time: the comparison must not reveal how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
        raise Problem(
            401,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
