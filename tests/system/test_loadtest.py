"""Locust against a real gunicorn process, through the runner a load tester uses
(scripts/loadtest): the smoke profile passes its gates and keeps a full report; an impossible
gate fails the run; compare.py reads two reports; a run, local or distributed, counts every
request."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.paths import ROOT
from tests.prom import sample_sum
from tests.system.server import ServerProcess, free_port

pytestmark = pytest.mark.system

REQUESTS = {
    "digits v1 predict",
    "digits v2 infer",
    "minilm v1 embed",
    "digits v1 predict (cache-heavy)",
}


def loadtest(
    reports: Path, model_repo: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "loadtest"), *args],
        env={**os.environ, "LOADTEST_REPORTS": str(reports), "MODEL_REPOSITORY": str(model_repo)},
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def only_report(reports: Path) -> Path:
    (folder,) = reports.iterdir()
    return folder


def stats(report: Path) -> dict[str, dict[str, str]]:
    with (report / "stats_stats.csv").open(newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


@pytest.fixture(scope="module")
def smoke_report(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 20-second smoke profile, run once, against a gunicorn the runner starts itself."""
    reports = tmp_path_factory.mktemp("smoke-reports")
    run = loadtest(reports, model_repo, "smoke")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return only_report(reports)


def test_the_smoke_profile_passes_its_gates_with_every_request_right(smoke_report: Path) -> None:
    rows = stats(smoke_report)
    assert rows.keys() >= REQUESTS
    for name in REQUESTS:
        assert int(rows[name]["Request Count"]) > 0, name
        assert rows[name]["Failure Count"] == "0", name  # a 200 with a wrong body would count
    verdict = json.loads((smoke_report / "gates.json").read_text())
    assert verdict["profile"] == "smoke" and verdict["passed"] is True
    assert {v["gate"] for v in verdict["verdicts"]} >= {"requests", "failure ratio", "p99 ms"}


def test_the_report_holds_the_csv_the_html_and_the_environment(smoke_report: Path) -> None:
    for name in ("stats_stats.csv", "stats_stats_history.csv", "stats_failures.csv"):
        assert (smoke_report / name).stat().st_size > 0, name
    assert "<html" in (smoke_report / "report.html").read_text()[:2000].lower()
    environment = json.loads((smoke_report / "environment.json").read_text())
    assert environment["target"] == "process"
    assert len(environment["git_revision"]) >= 40
    assert environment["cpu_count"] == os.cpu_count() and environment["cpu_model"]
    assert {m["name"] for m in environment["server"]["models"]} == {"digits", "minilm"}
    assert 0 < environment["locust_cpu_percent_of_one_core"] < 100
    (stage,) = environment["stages"]
    assert stage["users"] == 4 and stage["requests"] > 0 and stage["rps"] > 0


def test_compare_reads_two_reports_as_ratios(smoke_report: Path, tmp_path: Path) -> None:
    slower = tmp_path / "slower"
    slower.mkdir()
    rows = list(stats(smoke_report).values())
    for row in rows:  # the same run at half the throughput and double the latency
        row["Requests/s"] = str(float(row["Requests/s"]) / 2)
        for p in ("50%", "95%", "99%"):
            row[p] = str(float(row[p]) * 2)
    with (slower / "stats_stats.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    compare = [sys.executable, "-m", "loadtests.compare", str(smoke_report)]

    same = subprocess.run([*compare, str(smoke_report), "--max-regression", "0.1"],
                          cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip
    worse = subprocess.run([*compare, str(slower), "--max-regression", "0.1"],
                           cwd=ROOT, capture_output=True, text=True, check=False)  # fmt: skip

    assert same.returncode == 0, same.stderr
    aggregated = next(line for line in same.stdout.splitlines() if line.startswith("Aggregated"))
    assert aggregated.split()[3] == "1.00"
    assert "environment: the same" in same.stdout
    assert worse.returncode == 1
    assert "REGRESSION Aggregated: throughput x0.50" in worse.stderr
    assert "REGRESSION Aggregated: p99 x2.00" in worse.stderr


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(
        env={"MODEL_REPOSITORY": str(model_repo)},
        workers=1,
        log_path=tmp_path_factory.mktemp("loadtest-server") / "server.log",
    ) as process:
        yield process


def test_an_impossible_threshold_fails_the_run(
    server: ServerProcess, model_repo: Path, tmp_path: Path
) -> None:
    run = loadtest(
        tmp_path, model_repo, "--target", server.base_url, "smoke",
        "--slo-p99-ms", "0.1", "--run-time", "5s",
    )  # fmt: skip

    assert run.returncode == 1, run.stderr[-3000:]
    verdict = json.loads((only_report(tmp_path) / "gates.json").read_text())
    failed = [v for v in verdict["verdicts"] if not v["passed"]]
    assert [v["gate"] for v in failed] == ["p99 ms"] and failed[0]["limit"] == 0.1
    assert verdict["passed"] is False


def predictions_served(server: ServerProcess) -> int:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return int(sample_sum(text, "torchdock_prediction_requests_total"))


@pytest.mark.parametrize("workers", [0, 2], ids=["local", "distributed"])
def test_a_run_counts_the_requests_in_flight_at_its_end(
    server: ServerProcess, tmp_path: Path, workers: int
) -> None:
    """The CSV must count every request the server answered. Locust writes it once a second
    and not at exit, and a distributed master hears of requests only in its workers' reports,
    so the requests a run's users finish as it ends went missing. The server is paused across
    the end of the run, so that every user has a request in flight then."""
    locust = [str(Path(sys.executable).parent / "locust"), "--config", "loadtests/locust.conf"]
    port = free_port()
    served_before = predictions_served(server)
    log_path = tmp_path / "locust.log"
    distributed = ["--master", "--master-bind-port", str(port), "--expect-workers", str(workers)]
    with log_path.open("wb") as log:
        main = subprocess.Popen(
            [*locust, "--host", server.base_url, *(distributed if workers else []),
             "--run-time", "6s", "--slo-p99-ms", "60000", "--csv", str(tmp_path / "stats")],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        worker = [*locust, "--worker", "--master-port", str(port)]
        helpers = [
            subprocess.Popen(worker, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(workers)
        ]
        try:
            deadline = time.monotonic() + 60
            while "Shape test starting" not in log_path.read_text(errors="replace"):
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(3)
            os.killpg(server.process.pid, signal.SIGSTOP)
            try:
                time.sleep(6)  # the run ends 6 s after it started
            finally:
                os.killpg(server.process.pid, signal.SIGCONT)
            assert main.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        finally:
            for process in (main, *helpers):
                process.kill()
                process.wait(timeout=10)

    counted = int(stats(tmp_path)["Aggregated"]["Request Count"])
    assert counted > 0
    assert counted == predictions_served(server) - served_before
