"""How cutting a batch of texts by length pays: minilm's served path (tokenise, passes, forward,
pool) on its torch thread, the batch cut only at the token budget against the cheapest cut
(the default on a CPU), alternated round by round in one process.

    .venv/bin/python -m benchmarks.padding [--precision fp32] [--rounds 3] [--seconds 3]

Prints texts/s for each text profile (uniform sentences, mixed 4-200 words) and batch size,
and the ratio of the cheapest cut to the budget-only one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.bench import TEXT_PROFILES, ensure_repository, load_minilm
from loadtests.report import cpu_model
from service.config import available_cpus
from service.runtime.handlers.text import CPU_PASS_OVERHEAD_TOKENS, TOKENS_PER_PASS
from service.runtime.model import LoadedModel

# Overhead in tokens for each way of cutting: counting a pass as dear as a full budget keeps
# every batch whole unless it would pass the budget (what the server did before).
CUTS = {"budget only": TOKENS_PER_PASS, "cheapest": CPU_PASS_OVERHEAD_TOKENS}


def texts_per_second(model: LoadedModel, texts: list[str], batch: int, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        offset = (done * 7) % len(texts)  # batches of varied texts, not one batch repeated
        model.forward([texts[(offset + i) % len(texts)] for i in range(batch)])
        done += batch
    return done / (time.perf_counter() - started)


def measure(
    model: LoadedModel, args: argparse.Namespace
) -> list[tuple[str, int, dict[str, float]]]:
    """Torch thread only. Each cell: the median over rounds, the cuts alternated each round."""
    rows = []
    for profile in args.texts:
        texts = TEXT_PROFILES[profile]()
        for batch in args.batch_sizes:
            samples: dict[str, list[float]] = {label: [] for label in CUTS}
            for _ in range(args.rounds):
                for label, overhead in CUTS.items():
                    model.handler.text.pass_overhead_tokens = overhead  # type: ignore[attr-defined]
                    model.forward(texts[:batch])
                    samples[label].append(texts_per_second(model, texts, batch, args.seconds))
            medians = {label: statistics.median(s) for label, s in samples.items()}
            rows.append((profile, batch, medians))
            print(
                f"{profile:8} batch {batch:3}: "
                + ", ".join(f"{label} {rate:7.1f}" for label, rate in medians.items())
                + f", ratio {medians['cheapest'] / medians['budget only']:.2f}x",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the server: 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per cut, batch and round")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--texts", nargs="+", default=["mixed", "uniform"], choices=TEXT_PROFILES)
    parser.add_argument("--repository", type=Path, help="model repository with minilm")
    args = parser.parse_args(argv)

    model, torch_thread, loop = load_minilm(
        ensure_repository(args.repository), precision=args.precision, threads=args.threads
    )
    try:
        print(
            f"minilm, {model.precision.precision}, {args.threads} torch thread(s),"
            f" {available_cpus()} CPUs ({cpu_model()}); texts/s, median of {args.rounds} rounds",
            flush=True,
        )
        loop.run_until_complete(torch_thread.run(measure, model, args))
    finally:
        torch_thread.shutdown()
        loop.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
