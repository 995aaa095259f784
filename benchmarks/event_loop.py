"""The event loop's CPU time per prediction: the real app in-process (middleware, routes,
batcher; no sockets), driven through ASGI at a fixed concurrency. On the machines here the
loop shares the cores with the forward passes, so every millisecond it spends is taken from
them. With `--against REF` the same measurement runs on another commit too (a git worktree),
the two trees alternated round by round.

    .venv/bin/python -m benchmarks.event_loop [--model digits] [--api v1] [--against HEAD~1]

Prints, per tree, the median over rounds of the loop's CPU ms per request (its thread's CPU
time, `time.thread_time`) and of the wall ms per request, then the ratio of the trees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(args: argparse.Namespace) -> None:
    """One measurement, run with the tree under test first on sys.path: it imports only what
    every commit of the service has (create_app, Settings, build_models)."""
    import asyncio
    import time

    from asgi_lifespan import LifespanManager

    from service.app import create_app
    from service.config import Settings
    from service.packaging.build import build_models

    repository = Path(args.repository)
    if not (repository / args.model).exists():
        build_models(repository, names=(args.model,))
    settings = Settings(
        _env_file=None,
        model_repository=repository,
        models=[args.model],
        device="cpu",
        log_format="json",
        log_level="WARNING",
        replica_id="event-loop-bench",
    )
    path = (
        f"/v1/models/{args.model}:predict" if args.api == "v1" else f"/v2/models/{args.model}/infer"
    )

    def body(i: int) -> bytes:
        # A different input each request: identical ones in flight are computed once.
        instance: object = (
            [(i % 997) / 997] + [0.5] * 63
            if args.model == "digits"
            else f"request {i} asks how the weather will be tomorrow"
        )
        if args.api == "v1":
            return json.dumps({"instances": [instance]}).encode()
        if args.model == "digits":
            tensor = {"name": "pixels", "shape": [1, 8, 8], "datatype": "FP32", "data": instance}
        else:
            tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [instance]}
        return json.dumps({"inputs": [tensor]}).encode()

    async def one(app: object, i: int) -> None:
        payload = body(i)
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
            "server": ("bench", 80), "state": {},
            "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode())],
        }  # fmt: skip
        delivered = False

        async def receive() -> dict[str, object]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()  # the client never leaves
            raise AssertionError("unreachable")

        statuses: list[int] = []

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        await app(scope, receive, send)  # type: ignore[operator]
        if statuses != [200]:
            raise RuntimeError(f"{path} answered {statuses}")

    async def run(app: object, count: int) -> None:
        slots = asyncio.Semaphore(args.concurrency)

        async def limited(i: int) -> None:
            async with slots:
                await one(app, i)

        await asyncio.gather(*(limited(i) for i in range(count)))

    async def measure() -> dict[str, float]:
        app = create_app(settings)
        async with LifespanManager(app, startup_timeout=600) as managed:
            await run(managed.app, max(100, args.requests // 8))  # warm-up
            wall, cpu = time.perf_counter(), time.thread_time()
            await run(managed.app, args.requests)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        return {"loop_cpu_ms": cpu / args.requests * 1e3, "wall_ms": wall / args.requests * 1e3}

    print(json.dumps(asyncio.run(measure())), flush=True)


def _measure_in(tree: Path, repository: Path, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child"]
    command += ["--repository", str(repository), "--model", args.model, "--api", args.api]
    command += ["--requests", str(args.requests), "--concurrency", str(args.concurrency)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measurement in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="digits", choices=("digits", "minilm"))
    parser.add_argument("--api", default="v1", choices=("v1", "v2"))
    parser.add_argument("--requests", type=int, default=4000, help="per round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", metavar="REF", help="a commit to measure alongside")
    parser.add_argument("--repository", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    from loadtests.report import cpu_model
    from service.config import available_cpus

    with tempfile.TemporaryDirectory(prefix="torchdock-event-loop-") as scratch:
        trees = {"this tree": ROOT}
        if args.against:
            worktree = Path(scratch) / "against"
            add = ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktree)]
            subprocess.run([*add, args.against], check=True, capture_output=True)
            trees[args.against] = worktree
        try:
            # Each tree builds its own model: a package's format may differ between commits.
            repositories = {label: Path(scratch) / f"models-{i}" for i, label in enumerate(trees)}
            samples: dict[str, list[dict[str, float]]] = {label: [] for label in trees}
            for round_ in range(args.rounds):
                for label, tree in trees.items():
                    figures = _measure_in(tree, repositories[label], args)
                    samples[label].append(figures)
                    print(f"round {round_ + 1}, {label}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in figures.items()), flush=True)  # fmt: skip
        finally:
            if args.against:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)],
                    check=False, capture_output=True,
                )  # fmt: skip
    print(
        f"{args.model} over {args.api}, concurrency {args.concurrency}, {args.requests} requests"
        f" a round, {available_cpus()} CPUs ({cpu_model()}); medians of {args.rounds} rounds:"
    )
    medians = {
        label: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for label, runs in samples.items()
    }
    for label, figures in medians.items():
        print(
            f"  {label:>12}: loop CPU {figures['loop_cpu_ms']:.3f} ms a request,"
            f" wall {figures['wall_ms']:.3f} ms a request"
        )
    if args.against:
        ours, theirs = medians["this tree"], medians[args.against]
        cpu_ratio = ours["loop_cpu_ms"] / theirs["loop_cpu_ms"]
        wall_ratio = ours["wall_ms"] / theirs["wall_ms"]
        print(f"  this tree / {args.against}: loop CPU {cpu_ratio:.2f}x, wall {wall_ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
