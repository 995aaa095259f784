"""What the native per-shape caches (oneDNN's and ideep's) cost in memory and buy in speed:
minilm's served forward (tokenise, passes, forward, pool) on one torch thread, in a fresh
process for each cache setting, since the libraries read their capacities once.

    .venv/bin/python -m benchmarks.shape_cache [--precision bf16] [--rounds 3]
        [--settings serve onednn-1024 defaults]

memory: batches of 1-64 random texts of 4-60 words for `--memory-seconds`, nearly every batch
        a shape not seen before; anonymous memory (RssAnon) after a warm-up and at the end.
speed:  forwards cycling over `--shapes` shapes (batch 8, 17 tokens and up) for `--seconds`,
        after one pass over them; forwards/s.
Settings alternate round by round; each speed is the median over rounds, and its ratio to the
first setting's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench import ensure_repository, load_minilm
from loadtests import payloads
from loadtests.report import cpu_model
from service.cli import NATIVE_CACHE_CAPACITIES
from service.runtime.model import LoadedModel

# name: (label, the variables set; the rest unset, at the libraries' defaults)
SETTINGS: dict[str, tuple[str, dict[str, str]]] = {
    "serve": ("serve's caps", NATIVE_CACHE_CAPACITIES),
    "onednn-1024": (
        "oneDNN 1024, ideep 32",
        {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "32"},
    ),
    "defaults": ("libraries' defaults", {}),
}
# One WordPiece token each in minilm's vocabulary: a text of n of them is n + 2 tokens long.
ONE_TOKEN_WORDS = ["river", "music", "garden", "window", "silver", "market", "winter"]
SPEED_BATCH = 8


def anonymous_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon")) / 1024


def measure_memory(model: LoadedModel, seconds: float) -> dict[str, float]:
    rng = random.Random(7)
    words = " ".join(payloads.sentences()).split()

    def batch() -> list[str]:
        return [
            " ".join(rng.choices(words, k=rng.randint(4, 60))) for _ in range(rng.randint(1, 64))
        ]

    for _ in range(8):  # the first forwards allocate what every later one reuses
        model.forward(batch())
    before, batches, started = anonymous_mb(), 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.forward(batch())
        batches += 1
    return {"before_mb": before, "after_mb": anonymous_mb(), "batches": batches}


def measure_speed(model: LoadedModel, seconds: float, shapes: int) -> dict[str, float]:
    rng = random.Random(11)
    batches = [
        [" ".join(rng.choices(ONE_TOKEN_WORDS, k=15 + length)) for _ in range(SPEED_BATCH)]
        for length in range(shapes)
    ]
    for texts in batches:  # every shape once: a cache that holds them all misses no more
        model.forward(texts)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.forward(batches[done % shapes])
        done += 1
    return {"forwards_per_s": done / (time.perf_counter() - started)}


def child(args: argparse.Namespace) -> None:
    model, torch_thread, loop = load_minilm(args.repository, precision=args.precision, threads=1)
    try:
        if args.child == "memory":
            job = torch_thread.run(measure_memory, model, args.memory_seconds)
        else:
            job = torch_thread.run(measure_speed, model, args.seconds, args.shapes)
        figures = loop.run_until_complete(job)
    finally:
        torch_thread.shutdown()
        loop.close()
    print(json.dumps(figures))


def run_child(mode: str, setting: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.shape_cache", "--child", mode]
    command += ["--repository", str(args.repository), "--precision", args.precision]
    command += ["--seconds", str(args.seconds), "--memory-seconds", str(args.memory_seconds)]
    command += ["--shapes", str(args.shapes)]
    env = {k: v for k, v in os.environ.items() if k not in NATIVE_CACHE_CAPACITIES} | setting
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{completed.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(completed.stdout.splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="speed, per setting and round")
    parser.add_argument("--memory-seconds", type=float, default=60.0, help="memory, per setting")
    parser.add_argument("--shapes", type=int, default=32, help="shapes the speed loop cycles")
    parser.add_argument("--repository", type=Path, help="model repository with minilm")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    parser.add_argument("--child", choices=("memory", "speed"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0
    args.repository = ensure_repository(args.repository)

    print(f"minilm, {args.precision}, 1 torch thread ({cpu_model()})", flush=True)
    settings = {SETTINGS[name][0]: SETTINGS[name][1] for name in args.settings}
    for label, setting in settings.items():
        m = run_child("memory", setting, args)
        print(
            f"memory  {label:22}: RssAnon {m['before_mb']:7.1f} -> {m['after_mb']:7.1f} MB"
            f" (+{m['after_mb'] - m['before_mb']:.1f}) over {m['batches']:.0f} random batches"
            f" in {args.memory_seconds:g} s",
            flush=True,
        )
    speeds: dict[str, list[float]] = {label: [] for label in settings}
    for _ in range(args.rounds):
        for label, setting in settings.items():
            speeds[label].append(run_child("speed", setting, args)["forwards_per_s"])
    base = statistics.median(next(iter(speeds.values())))
    for label, samples in speeds.items():
        median = statistics.median(samples)
        print(
            f"speed   {label:22}: {median:6.1f} forwards/s cycling {args.shapes} shapes"
            f" (rounds: {', '.join(f'{s:.1f}' for s in samples)}), {median / base:.2f}x the first",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
