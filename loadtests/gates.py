"""The end of a run: the profile's SLO gates set Locust's exit code, and the report folder gets
environment.json and gates.json beside Locust's CSV and HTML."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from loadtests import report
from loadtests.profiles import evaluate
from loadtests.run import RUN, active_profile, options

log = logging.getLogger("torchdock.loadtest")


@events.init.add_listener
def _check_profile(environment: Environment, **_: Any) -> None:
    active_profile(environment)  # an unknown profile stops Locust before it starts


@events.report_to_master.add_listener
def _send_tallies(client_id: str, data: dict[str, Any]) -> None:
    data["torchdock_tallies"] = dict(RUN.tallies)
    RUN.tallies.clear()


@events.worker_report.add_listener
def _receive_tallies(client_id: str, data: dict[str, Any]) -> None:
    RUN.tallies.update(data.get("torchdock_tallies", {}))


@events.test_start.add_listener
def _record_start(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    profile = active_profile(environment)
    classes = options(environment).user_classes or list(profile.user_classes)
    RUN.restart(report.environment(environment.host or "", profile.name, classes))
    if isinstance(environment.runner, MasterRunner):
        RUN.environment["workers"] = len(environment.runner.clients)


@events.quitting.add_listener
def _gate(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    RUN.close_stage(environment.stats.total)
    parsed = options(environment)
    profile = active_profile(environment)
    overrides = {
        "max_failure_ratio": parsed.slo_max_failure_ratio,
        "p95_ms": parsed.slo_p95_ms,
        "p99_ms": parsed.slo_p99_ms,
    }
    gates = dataclasses.replace(
        profile.gates, **{k: v for k, v in overrides.items() if v is not None}
    )
    verdicts = evaluate(gates, environment.stats.total, environment.stats.entries.values())
    passed = all(v.passed for v in verdicts)
    environment.process_exit_code = 0 if passed else 1

    cpu_percent, wall = RUN.cpu_percent()
    log.info("profile %s: %s", profile.name, "gates passed" if passed else "GATES FAILED")
    for verdict in verdicts:
        log.info("  %s", verdict)
    log.info(
        "locust's own CPU: %.0f%% of one core over %.0f s; tallies: %s",
        cpu_percent, wall, dict(RUN.tallies),
    )  # fmt: skip
    if not parsed.report_dir:
        return
    directory = Path(parsed.report_dir)
    record = RUN.environment | {
        "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "locust_cpu_percent_of_one_core": round(cpu_percent, 1),
        "tallies": dict(RUN.tallies),
        "stages": RUN.stages,
    }
    report.write_json(directory, "environment.json", record)
    report.write_json(
        directory, "gates.json",
        {"profile": profile.name, "passed": passed,
         "verdicts": [dataclasses.asdict(v) | {"passed": v.passed} for v in verdicts]},
    )  # fmt: skip
