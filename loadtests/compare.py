"""Compare two load-test reports (folders written by scripts/loadtest): throughput and
percentiles per request name, as ratios of the second run to the first, and what differed in
their environments.

    python -m loadtests.compare loadtests/reports/A loadtests/reports/B [--max-regression 0.1]

With --max-regression, the exit code is 1 when B's throughput fell, or a percentile rose, by more
than that fraction on any request name both runs made.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PERCENTILES = ("50%", "95%", "99%")
ENVIRONMENT_KEYS = (
    "profile", "user_classes", "target", "git_revision", "image", "replicas", "server_cpus",
    "cpu_model", "cpu_count", "locust_cpus", "locust_cpu_percent_of_one_core",
)  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    requests: int
    failures: int
    rps: float
    percentiles_ms: dict[str, float]


def read_stats(report: Path) -> dict[str, Row]:
    path = report / "stats_stats.csv"
    if not path.is_file():
        raise SystemExit(f"{report} is not a load-test report: it has no stats_stats.csv")
    with path.open(newline="") as file:
        return {
            line["Name"]: Row(
                name=line["Name"],
                requests=int(line["Request Count"]),
                failures=int(line["Failure Count"]),
                rps=float(line["Requests/s"]),
                percentiles_ms={p: _number(line[p]) for p in PERCENTILES},
            )
            for line in csv.DictReader(file)
        }


def _number(text: str) -> float:
    return float(text) if text not in ("", "N/A") else math.nan


def read_environment(report: Path) -> dict[str, Any]:
    path = report / "environment.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def ratio(new: float, old: float) -> float:
    return new / old if old and not math.isnan(old) and not math.isnan(new) else math.nan


def regressions(before: dict[str, Row], after: dict[str, Row], tolerance: float) -> list[str]:
    found = []
    for name in before.keys() & after.keys():
        old, new = before[name], after[name]
        if ratio(new.rps, old.rps) < 1 - tolerance:
            found.append(f"{name}: throughput x{ratio(new.rps, old.rps):.2f}")
        for p in PERCENTILES:
            change = ratio(new.percentiles_ms[p], old.percentiles_ms[p])
            if change > 1 + tolerance:
                found.append(f"{name}: p{p.rstrip('%')} x{change:.2f}")
    return sorted(found)


def table(before: dict[str, Row], after: dict[str, Row]) -> list[str]:
    header = f"{'request':<34} {'req/s A':>9} {'req/s B':>9} {'B/A':>6}"
    header += "".join(f" {'p' + p.rstrip('%') + ' B/A':>9}" for p in PERCENTILES)
    header += f" {'fail A':>7} {'fail B':>7}"
    lines = [header]
    names = sorted(before.keys() & after.keys(), key=lambda n: (n == "Aggregated", n))
    for name in names:
        old, new = before[name], after[name]
        line = f"{name[:34]:<34} {old.rps:>9.1f} {new.rps:>9.1f} {ratio(new.rps, old.rps):>6.2f}"
        for p in PERCENTILES:
            line += f" {ratio(new.percentiles_ms[p], old.percentiles_ms[p]):>9.2f}"
        lines.append(line + f" {old.failures:>7} {new.failures:>7}")
    for name in sorted(before.keys() ^ after.keys()):
        lines.append(f"{name[:34]:<34} only in {'A' if name in before else 'B'}")
    return lines


def environment_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
        for key in ENVIRONMENT_KEYS
        if a.get(key) != b.get(key)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="report folder A")
    parser.add_argument("after", type=Path, help="report folder B")
    parser.add_argument("--max-regression", type=float, default=None, metavar="FRACTION")
    options = parser.parse_args(argv)
    before, after = read_stats(options.before), read_stats(options.after)
    print("\n".join(table(before, after)))
    differences = environment_differences(
        read_environment(options.before), read_environment(options.after)
    )
    print("\nenvironment: " + ("the same" if not differences else ""))
    for difference in differences:
        print(f"  {difference}")
    if options.max_regression is None:
        return 0
    found = regressions(before, after, options.max_regression)
    for regression in found:
        print(f"REGRESSION {regression}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
