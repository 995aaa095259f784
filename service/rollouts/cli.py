"""`torchdock rollout show|set|promote|abort|report`: routing policies in the shared store.

Every worker and replica follows a change within ROUTING_REFRESH_S. Each change names the
revision it replaces, so that a change made meanwhile (another operator, the canary guard) is
refused rather than overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
from pydantic import ValidationError

from service.rollouts.policy import NoCanary, RoutingPolicy, aborted, promoted
from service.rollouts.report import build_report, plot, render_text
from service.rollouts.store import StaleRevision, load_policies, save_policy
from service.storage import migrate
from service.storage.maintenance import parse_duration


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser],
               conninfo: Callable[[], str]) -> None:  # fmt: skip
    rollout = commands.add_parser(
        "rollout", help="canary and shadow routing between model versions"
    ).add_subparsers(dest="rollout_command", required=True)
    show = rollout.add_parser("show", help="every stored routing policy")
    show.set_defaults(func=lambda args: asyncio.run(_show(conninfo())))
    set_ = rollout.add_parser("set", help="store a model's routing policy")
    set_.add_argument("--model", required=True)
    set_.add_argument(
        "--policy",
        required=True,
        help='JSON, e.g. {"default": 1, "canary": {"version": 2, "percent": 10}}',
    )
    set_.set_defaults(func=lambda args: asyncio.run(_set(args, conninfo())))
    for name, change, says in (
        ("promote", promoted, "the canary becomes the default for every request"),
        ("abort", aborted, "every request back on the default version"),
    ):
        command = rollout.add_parser(name, help=says)
        command.add_argument("--model", required=True)
        command.add_argument("--reason", help="recorded in the policy's history")
        command.set_defaults(
            func=lambda args, name=name, change=change: asyncio.run(
                _change(args, conninfo(), name, change)
            )
        )
    report = rollout.add_parser("report", help="per version: traffic, errors, latency, agreement")
    report.add_argument("--model", required=True)
    report.add_argument("--since", default="1h", help="the period, e.g. 1h, 30m, 7d")
    report.add_argument("--json", action="store_true", help="JSON instead of text")
    report.add_argument("--plot", type=Path, help="also write a PNG of latency and agreement")
    report.set_defaults(func=lambda args: asyncio.run(_report(args, conninfo())))


def _fail(message: str) -> int:
    print(f"torchdock rollout: {message}", file=sys.stderr)
    return 2


async def _show(conninfo: str) -> int:
    await migrate.upgrade(conninfo)
    for model, stored in sorted((await load_policies(conninfo)).items()):
        policy = stored.policy.model_dump(mode="json", exclude_none=True)
        print(f"{model}: revision {stored.revision}, {json.dumps(policy)}")
    return 0


async def _set(args: argparse.Namespace, conninfo: str) -> int:
    try:
        policy = RoutingPolicy.model_validate(orjson.loads(args.policy))
    except (orjson.JSONDecodeError, ValidationError) as e:
        return _fail(f"--policy: {e}")
    await migrate.upgrade(conninfo)
    current = (await load_policies(conninfo)).get(args.model)
    saved = await save_policy(
        conninfo, args.model, policy, action="set", expected=current.revision if current else 0
    )
    print(f"{args.model}: revision {saved.revision}; every replica follows within"
          " ROUTING_REFRESH_S")  # fmt: skip
    return 0


async def _change(
    args: argparse.Namespace,
    conninfo: str,
    action: str,
    change: Callable[[RoutingPolicy], RoutingPolicy],
) -> int:
    await migrate.upgrade(conninfo)
    current = (await load_policies(conninfo)).get(args.model)
    if current is None:
        return _fail(f"{args.model!r} has no stored routing policy")
    try:
        policy = change(current.policy)
        saved = await save_policy(
            conninfo, args.model, policy, action=action, reason=args.reason,
            expected=current.revision,
        )  # fmt: skip
    except (NoCanary, StaleRevision) as e:
        return _fail(str(e))
    shown = json.dumps(policy.model_dump(mode="json", exclude_none=True))
    print(f"{args.model}: {action}d at revision {saved.revision}: {shown}")
    return 0


async def _report(args: argparse.Namespace, conninfo: str) -> int:
    try:
        since = parse_duration(args.since)
    except ValueError as e:
        return _fail(f"--since: {e}")
    report = await build_report(conninfo, args.model, since=since)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(render_text(report))
    if args.plot is not None:
        plot(report, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0
