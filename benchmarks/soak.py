"""Soak minilm at a fixed concurrency and watch each worker's RSS for growth.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--concurrency 32] [--env JSON]

`--env` adds to the server's environment, e.g. to soak under another allocator:
`--env '{"LD_PRELOAD": "/lib/x86_64-linux-gnu/libjemalloc.so.2"}'`.

RSS is sampled every `--interval` seconds. Growth is measured from the end of the warm-up to
the end of the run, per worker; the exit code is 1 when it exceeds `--max-growth`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.bench import Server, ensure_repository, requests_for
from benchmarks.httpload import measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--max-growth", type=float, default=0.05)
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--env", default="{}", help="JSON object added to the server's environment")
    args = parser.parse_args(argv)

    repository = ensure_repository(args.repository)
    log = Path(tempfile.mkdtemp(prefix="torchdock-soak-")) / "server.log"
    server = Server(repository, json.loads(args.env), log)
    samples: list[tuple[float, list[float], float, int]] = []
    try:
        server.wait_ready()
        requests = requests_for(server.port)
        elapsed = 0.0
        total = args.minutes * 60
        while elapsed < total:
            result = measure(server.port, requests, args.concurrency, args.interval, warmup_s=0)
            elapsed += args.interval
            rss = server.worker_rss_mb()
            samples.append((elapsed, rss, result.rps, result.errors))
            print(
                f"t={elapsed:5.0f}s rps={result.rps:6.1f} errors={result.errors}"
                f" rss_mb={'/'.join(f'{r:.1f}' for r in rss)}",
                flush=True,
            )
    finally:
        server.stop()
    warm = next(s for s in samples if s[0] >= args.warmup_minutes * 60)
    last = samples[-1]
    growth = [(end - start) / start for start, end in zip(warm[1], last[1], strict=True)]
    errors = sum(s[3] for s in samples)
    print(
        f"RSS after warm-up {'/'.join(f'{r:.1f}' for r in warm[1])} MB, at the end"
        f" {'/'.join(f'{r:.1f}' for r in last[1])} MB, growth"
        f" {'/'.join(f'{g:+.2%}' for g in growth)}; errors {errors}"
    )
    return 0 if max(growth) <= args.max_growth and errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
