"""API keys: how a key looks, how it is kept (its SHA-256 only), and how one is checked.

A key reads `tdk_<key id>_<secret>`. The key id is public (it names the key in logs, metrics
and the prediction log); the secret is 256 random bits, shown once, when the key is made.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "tdk"
_KEY = re.compile(rf"^{PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})$")


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    name: str
    secret_sha256: bytes
    models: tuple[str, ...] | None  # None: every model
    rate_limit: str | None
    expires_at: dt.datetime | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None

    def usable_at(self, now: dt.datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models


def new_key() -> tuple[str, str, bytes]:
    """A fresh key: (key id, the key itself, its SHA-256)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    return key_id, key, digest(key)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key; None for anything else."""
    match = _KEY.match(key)
    return match.group(1) if match else None


def matches(key: str, stored: ApiKey) -> bool:
    # Constant time: how much of the digest matched must not show in the answer's timing.
    return hmac.compare_digest(digest(key), stored.secret_sha256)
