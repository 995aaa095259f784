"""What a Locust run shares between the user classes, the load shape and the gates: the active
profile, the per-stage throughput, and counts that are not requests."""

from __future__ import annotations

import argparse
import collections
import time
from dataclasses import dataclass, field
from typing import Any

from locust.env import Environment
from locust.stats import StatsEntry

from loadtests import report
from loadtests.profiles import Profile, load_profiles

PROFILES = load_profiles()
DEFAULT_PROFILE = "smoke"


def options(environment: Environment) -> argparse.Namespace:
    parsed: argparse.Namespace | None = environment.parsed_options
    if parsed is None:
        raise RuntimeError("Locust has not parsed its options")
    return parsed


def active_profile(environment: Environment) -> Profile:
    name = getattr(options(environment), "profile", None) or DEFAULT_PROFILE
    if name not in PROFILES:
        raise SystemExit(
            f"unknown profile {name!r}; monitoring/prometheus/slo.toml has {', '.join(PROFILES)}"
        )
    return PROFILES[name]


@dataclass
class Run:
    started_wall: float = field(default_factory=time.monotonic)
    started_cpu: float = field(default_factory=report.cpu_seconds)
    environment: dict[str, Any] = field(default_factory=dict)
    # Expected rejections, cache outcomes, truncations. Workers send theirs to the master with
    # every report.
    tallies: collections.Counter[str] = field(default_factory=collections.Counter)
    stages: list[dict[str, Any]] = field(default_factory=list)

    def restart(self, environment: dict[str, Any]) -> None:
        self.started_wall, self.started_cpu = time.monotonic(), report.cpu_seconds()
        self.environment = environment

    def cpu_percent(self) -> tuple[float, float]:
        """Locust's own CPU use, in percent of one core, and the wall seconds it is over."""
        wall = time.monotonic() - self.started_wall
        cpu = report.cpu_seconds() - self.started_cpu
        return (100 * cpu / wall if wall else 0.0), wall

    def open_stage(self, number: int, users: int, total: StatsEntry) -> None:
        self.close_stage(total)
        self.stages.append(
            {
                "stage": number,
                "users": users,
                "started": time.monotonic(),
                "requests_before": total.num_requests,
                "failures_before": total.num_failures,
            }
        )

    def close_stage(self, total: StatsEntry) -> None:
        """Throughput and tail latency of the stage that is ending: where throughput stops
        growing with users is read off these rows."""
        if not self.stages or "seconds" in self.stages[-1]:
            return
        stage = self.stages[-1]
        stage["seconds"] = round(time.monotonic() - stage.pop("started"), 1)
        stage["requests"] = total.num_requests - stage.pop("requests_before")
        stage["failures"] = total.num_failures - stage.pop("failures_before")
        stage["rps"] = round(stage["requests"] / stage["seconds"], 1) if stage["seconds"] else 0.0
        stage["p50_ms_last10s"] = total.get_current_response_time_percentile(0.5)
        stage["p95_ms_last10s"] = total.get_current_response_time_percentile(0.95)


RUN = Run()
