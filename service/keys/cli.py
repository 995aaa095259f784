"""`torchdock keys create|list|revoke`: API keys in the Postgres the service logs to."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import re
import sys
from collections.abc import Callable

from service.keys.keys import ApiKey
from service.keys.rate_limit import check_rate_limit
from service.keys.store import KeyExists, create_key, list_keys, revoke_key
from service.storage import migrate
from service.storage.maintenance import parse_duration

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               conninfo: Callable[[], str]) -> None:  # fmt: skip
    keys = commands.add_parser("keys", help="API keys (kept hashed in Postgres)").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="make a key; it is printed once, and kept hashed")
    create.add_argument("--name", required=True, help="who or what uses it (unique)")
    create.add_argument("--models", help="comma-separated models it may use (default: all)")
    create.add_argument(
        "--rate-limit", help="e.g. 20/second, 1000/hour (default: API_KEY_RATE_LIMIT)"
    )
    create.add_argument("--expires-in", help="e.g. 90d, 12h (default: never)")
    create.set_defaults(func=lambda args: _create(args, conninfo()))
    listing = keys.add_parser("list", help="every key, without its secret")
    listing.set_defaults(func=lambda args: _list(conninfo()))
    revoke = keys.add_parser("revoke", help="revoke a key by name or key id")
    revoke.add_argument("key", help="its name or key id")
    revoke.set_defaults(func=lambda args: _revoke(args.key, conninfo()))


def _fail(message: str) -> int:
    print(f"torchdock keys: {message}", file=sys.stderr)
    return 2


def _create(args: argparse.Namespace, conninfo: str) -> int:
    if not _NAME.match(args.name):
        return _fail("--name: letters, digits, '.', '_' and '-', at most 64, e.g. batch-scorer")
    if args.rate_limit is not None:
        try:
            check_rate_limit(args.rate_limit)
        except ValueError as e:
            return _fail(f"--rate-limit: {e}")
    expires_at = None
    if args.expires_in is not None:
        try:
            expires_at = dt.datetime.now(dt.UTC) + parse_duration(args.expires_in)
        except ValueError as e:
            return _fail(f"--expires-in: {e}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    asyncio.run(migrate.upgrade(conninfo))
    try:
        key, secret = create_key(
            conninfo, name=args.name, models=models, rate_limit=args.rate_limit,
            expires_at=expires_at,
        )  # fmt: skip
    except KeyExists as e:
        return _fail(str(e))
    # The key on stdout alone, so that `KEY=$(torchdock keys create ...)` captures it.
    print(secret)
    print(f"created key {key.key_id} ({key.name}); it is not shown again", file=sys.stderr)
    return 0


def _list(conninfo: str) -> int:
    asyncio.run(migrate.upgrade(conninfo))
    print(f"{'key id':<12}  {'name':<24} {'models':<20} {'rate limit':<14} {'expires':<20} state")
    now = dt.datetime.now(dt.UTC)
    for key in list_keys(conninfo):
        print(
            f"{key.key_id:<12}  {key.name:<24} {','.join(key.models or ['*']):<20}"
            f" {key.rate_limit or '-':<14} {_when(key.expires_at):<20} {_state(key, now)}"
        )
    return 0


def _revoke(name_or_id: str, conninfo: str) -> int:
    asyncio.run(migrate.upgrade(conninfo))
    key = revoke_key(conninfo, name_or_id)
    if key is None:
        return _fail(f"no usable key named or with id {name_or_id!r}")
    print(f"revoked key {key.key_id} ({key.name}); every replica refuses it within"
          " API_KEYS_REFRESH_S")  # fmt: skip
    return 0


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "never"


def _state(key: ApiKey, now: dt.datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    return "active" if key.usable_at(now) else "expired"
