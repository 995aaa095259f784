"""What a slow shadow costs the primary: alternating phases without and with one.

    .venv/bin/python -m benchmarks.shadow [--rounds 6] [--seconds 5] [--rate 50] [--work 240]
                                          [--shadow-cpus N] [--max-busy F] [--client-cpus LIST]
                                          [--control]

`torchdock serve` (2 workers) with the bundled digits as version 1 and, as version 3, a
classifier of the same interface doing `--work` large matrix products per instance (about
50x digits' forward pass at 240). Each round serves digits at `--rate` requests/s, first with
no policy (A), then shadowed by version 3 (B), then waits for the queued shadows to drain.
Latency is read from the prediction log (the server's own `total_ms`, no client in it) and
from the client; the report pools the rounds, so that a slow minute weighs on both sides.
`--control` makes B the same as A (no shadow): the ratio it prints is this machine's noise.
`--shadow-cpus` and `--max-busy` set the server's SHADOW_CPUS and SHADOW_MAX_BUSY, in both phases;
`--client-cpus` pins the load generator (e.g. onto the shadow's CPU, away from the workers').
Postgres: a throwaway database made on TEST_DATABASE_URL's server (default: the local one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import psycopg.conninfo

from benchmarks.bench import Server, ensure_repository
from tests.prom import sample_value
from tests.rollouts.following import wait_following
from tests.rollouts.versions import OtherClassifier, package_classifier
from tests.traffic import Traffic

TOKEN = "a-benchmark-admin-token-long-enough-32"
ROUTING = "/v2/repository/models/digits/routing"
PHASES: list[tuple[str, dict[str, Any]]] = [
    ("A", {"default": 1}),
    ("B", {"default": 1, "shadow": {"version": 3}}),
]


class Digits(Traffic):
    def __init__(self, url: str, rate: float) -> None:
        super().__init__(threads=4, rate=rate)
        self.url = url
        self.latencies: list[float] = []
        self._rng = np.random.default_rng(0)

    def connect(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)

    def send(self, client: httpx.Client, thread: int) -> None:
        image = (self._rng.random((8, 8)) * 16).round(1).tolist()
        started = time.perf_counter()
        client.post("/v1/models/digits:predict", json={"instances": [image]})
        with self.lock:
            self.latencies.append((time.perf_counter() - started) * 1000)


def _percentiles(values: list[float]) -> str:
    p50, p99 = np.percentile(values, [50, 99])
    return f"p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  (n={len(values)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--work", type=int, default=240)
    parser.add_argument("--shadow-cpus", help="SHADOW_CPUS: how many CPUs the shadows keep")
    parser.add_argument("--client-cpus", help="CPUs for the load generator, e.g. 1 or 0,1")
    parser.add_argument("--max-busy", type=float, help="SHADOW_MAX_BUSY (default: the server's)")
    parser.add_argument("--control", action="store_true", help="no shadow in B either")
    args = parser.parse_args(argv)
    phases = [(phase, PHASES[0][1] if args.control else body) for phase, body in PHASES]

    admin = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    name = f"torchdock_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database = psycopg.conninfo.make_conninfo(admin, dbname=name)
    repository = ensure_repository(None, models=("digits",))
    package_classifier(repository, 3, OtherClassifier(seed=3, work=args.work), max_batch_size=8)
    log = Path(tempfile.mkdtemp(prefix="torchdock-shadow-")) / "server.log"
    env = {"MODELS": '["digits"]', "WORKERS": "2", "DATABASE_URL": database,
           "ADMIN_TOKEN": TOKEN, "ROUTING_REFRESH_S": "0.5"}  # fmt: skip
    if args.shadow_cpus is not None:
        env["SHADOW_CPUS"] = args.shadow_cpus
    if args.max_busy is not None:
        env["SHADOW_MAX_BUSY"] = str(args.max_busy)
    server = Server(repository, env, log)
    windows: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {"A": [], "B": []}
    client_ms: dict[str, list[float]] = {"A": [], "B": []}

    def policy(body: dict[str, Any]) -> None:
        """Set, and wait until every worker follows it (with its shadow loaded, if any)."""
        headers = {"Authorization": f"Bearer {TOKEN}"}
        r = httpx.put(server.url + ROUTING, json={"policy": body}, headers=headers)
        r.raise_for_status()
        shadow = body.get("shadow", {}).get("version")
        wait_following(server.url, r.json()["revision"], since=time.time(), shadow=shadow)

    try:
        server.wait_ready()
        if args.client_cpus is not None:  # after the server started: it keeps every CPU
            os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
        for _ in range(args.rounds):
            for phase, body in phases:
                policy(body)
                start = dt.datetime.now(dt.UTC)
                with Digits(server.url, args.rate) as load:
                    time.sleep(args.seconds)
                windows[phase].append((start, dt.datetime.now(dt.UTC)))
                client_ms[phase] += load.latencies
            policy({"default": 1})
            time.sleep(2.5)  # queued shadows are dropped after 2 s
        time.sleep(2)  # the log's last rows
        metrics = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    server_ms: dict[str, list[float]] = {}
    with psycopg.connect(database) as conn:
        for phase, spans in windows.items():
            server_ms[phase] = [
                row[0]
                for start, end in spans
                for row in conn.execute(
                    "SELECT total_ms FROM predictions WHERE role = 'primary'"
                    " AND created_at BETWEEN %s AND %s",
                    (start, end),
                ).fetchall()
            ]
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')

    shadow = [sample_value(metrics, f"torchdock_shadow_duration_seconds_{s}", model_version="3")
              for s in ("sum", "count")]  # fmt: skip
    forward = [sample_value(metrics, f"torchdock_inference_duration_seconds_{s}",
                            model_version="1") for s in ("sum", "count")]  # fmt: skip
    outcomes = {o: sample_value(metrics, "torchdock_shadow_predictions_total",
                                model_version="3", outcome=o)
                for o in ("computed", "dropped", "failed")}  # fmt: skip
    if shadow[1]:
        print(f"shadow forward {shadow[0] / shadow[1] * 1000:.1f} ms, "
              f"{(shadow[0] / shadow[1]) / (forward[0] / forward[1]):.0f}x digits' "
              f"({forward[0] / forward[1] * 1000:.2f} ms); shadow requests {outcomes}")  # fmt: skip
    else:
        print("control: no shadow in either phase")
    for source, values in (("server", server_ms), ("client", client_ms)):
        for phase in ("A", "B"):
            label = (
                "A, no shadow" if phase == "A" else "B, control " if args.control else "B, shadowed"
            )
            print(f"{source} {label}: {_percentiles(values[phase])}")
        ratio = np.percentile(values["B"], 99) / np.percentile(values["A"], 99)
        print(f"{source} p99 ratio, B / A: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
