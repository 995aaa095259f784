"""What the Redis cache and the Postgres log cost and gain, side by side in one run.

    .venv/bin/python -m benchmarks.bench_storage --redis-url redis://127.0.0.1:6379/14 \\
        --database-url postgresql://postgres@127.0.0.1:5432/test

For each model, at one concurrency: no cache and no log; the log on; the cache on with every
request a miss (unique inputs); the cache on with every request a hit.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import orjson
import redis

from benchmarks.bench import HOST, Server, ensure_repository
from benchmarks.httpload import LoadResult, build_request, measure
from loadtests.payloads import sentences


def _bodies(model: str, count: int, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    if model == "minilm":
        corpus = sentences()
        return [
            orjson.dumps({"instances": [f"{rnd.choice(corpus)} ({seed}-{i})"]})
            for i in range(count)
        ]
    return [
        orjson.dumps({"instances": [[[rnd.randint(0, 16) for _ in range(8)] for _ in range(8)]]})
        for _ in range(count)
    ]


def _measure(
    repository: Path,
    model: str,
    env: dict[str, str],
    bodies: list[bytes],
    args: argparse.Namespace,
    *,
    warm: bool,
) -> LoadResult:
    log = Path(tempfile.mkdtemp(prefix="torchdock-bench-storage-")) / "server.log"
    # One worker: connections spread unevenly over several, which adds noise to the ratios.
    server = Server(repository, {"MODELS": f'["{model}"]', "WORKERS": "1", **env}, log)
    try:
        server.wait_ready()
        path = f"/v1/models/{model}:predict"
        requests = [build_request(HOST, server.port, path, b) for b in bodies]
        if warm:  # put every input in the cache first
            measure(server.port, requests, 4, max(2.0, len(requests) / 100), warmup_s=0)
        return measure(server.port, requests, args.concurrency, args.seconds)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument(
        "--models", nargs="+", default=["digits", "minilm"], choices=["digits", "minilm"]
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repository", type=Path)
    args = parser.parse_args(argv)
    repository = ensure_repository(args.repository, args.models)
    spool = tempfile.mkdtemp(prefix="torchdock-bench-spool-")
    log_env = {"DATABASE_URL": args.database_url, "SPOOL_DIR": spool}
    cache_env = {"REDIS_URL": args.redis_url}
    print("| model | setting | req/s | p50 ms | p99 ms | errors | vs no cache, no log |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for model in args.models:
        unique = _bodies(model, 40_000 if model == "digits" else 12_000, seed=1)
        repeated = _bodies(model, 200, seed=2)
        runs = [
            ("no cache, no log", {}, unique, False),
            ("log on", log_env, unique, False),
            ("cache on, all misses", cache_env, unique, False),
            ("cache on, all hits", cache_env, repeated, True),
        ]
        baseline = None
        for label, env, bodies, warm in runs:
            redis.Redis.from_url(args.redis_url).flushdb()
            result = _measure(repository, model, env, bodies, args, warm=warm)
            baseline = baseline or result.rps
            print(
                f"| {model} | {label} | {result.rps:,.0f} | {result.p50_ms:.1f}"
                f" | {result.p99_ms:.1f} | {result.errors} | {result.rps / baseline:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
