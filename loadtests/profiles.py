"""Load-test profiles and their SLO gates, read from slo.toml."""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Beside the alert rules that repeat its objectives (a test keeps the two in agreement).
SLO_FILE = Path(__file__).resolve().parents[1] / "monitoring" / "prometheus" / "slo.toml"


@dataclass(frozen=True)
class Stage:
    until_s: float
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class Gates:
    max_failure_ratio: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    # Request p99 against its model's objective; request names start with the model's name.
    model_p99_ms: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    user_classes: tuple[str, ...]
    stages: tuple[Stage, ...]
    gates: Gates

    @property
    def duration_s(self) -> float:
        return self.stages[-1].until_s


@dataclass(frozen=True)
class Objectives:
    availability: float
    latency_p99_ms: Mapping[str, float]


def load_objectives(path: Path = SLO_FILE) -> Objectives:
    raw = tomllib.loads(path.read_text())["objectives"]
    return Objectives(float(raw["availability"]), dict(raw["latency_p99_ms"]))


def load_profiles(path: Path = SLO_FILE) -> dict[str, Profile]:
    document = tomllib.loads(path.read_text())
    objectives = load_objectives(path)
    return {name: _profile(name, raw, objectives) for name, raw in document["profiles"].items()}


def _profile(name: str, raw: Mapping[str, Any], objectives: Objectives) -> Profile:
    stages = tuple(
        Stage(float(s["until_s"]), int(s["users"]), float(s["spawn_rate"])) for s in raw["stages"]
    )
    if any(b.until_s <= a.until_s for a, b in itertools.pairwise(stages)):
        raise ValueError(f"profile {name}: stages must end in increasing order")
    gates = raw.get("gates", {})
    failure = gates.get("max_failure_ratio")
    return Profile(
        name=name,
        description=raw.get("description", ""),
        user_classes=tuple(raw["user_classes"]),
        stages=stages,
        gates=Gates(
            max_failure_ratio=round(1 - objectives.availability, 6)
            if failure == "budget"
            else failure,
            p95_ms=gates.get("p95_ms"),
            p99_ms=gates.get("p99_ms"),
            model_p99_ms=objectives.latency_p99_ms if gates.get("model_p99") else {},
        ),
    )


class RequestStats(Protocol):
    """The part of a Locust StatsEntry that the gates read."""

    name: str
    num_requests: int

    @property
    def fail_ratio(self) -> float: ...

    def get_response_time_percentile(self, percent: float) -> float: ...


@dataclass(frozen=True)
class Verdict:
    gate: str
    limit: float
    measured: float
    # Most gates are ceilings; a floor (e.g. a run must make requests) says so.
    floor: bool = False

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.floor else self.measured <= self.limit

    def __str__(self) -> str:
        outcome = "pass" if self.passed else "FAIL"
        bound = "at least" if self.floor else "at most"
        return f"{outcome}  {self.gate}: {self.measured:g} ({bound} {self.limit:g})"


def evaluate(gates: Gates, total: RequestStats, entries: Iterable[RequestStats]) -> list[Verdict]:
    """Every gate of a profile, measured on a finished run."""
    verdicts = [Verdict("requests", 1, total.num_requests, floor=True)]
    if gates.max_failure_ratio is not None:
        verdicts.append(Verdict("failure ratio", gates.max_failure_ratio, total.fail_ratio))
    for percent, limit in ((0.95, gates.p95_ms), (0.99, gates.p99_ms)):
        if limit is not None:
            measured = total.get_response_time_percentile(percent)
            verdicts.append(Verdict(f"p{percent * 100:.0f} ms", limit, measured))
    for entry in entries:
        model = entry.name.split(" ", 1)[0]
        if model in gates.model_p99_ms and entry.num_requests:
            measured = entry.get_response_time_percentile(0.99)
            verdicts.append(Verdict(f"{entry.name} p99 ms", gates.model_p99_ms[model], measured))
    return verdicts
