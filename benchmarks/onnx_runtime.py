"""ONNX Runtime against torch for minilm, side by side: the packaged artifact run eagerly in fp32,
its ONNX variant under ONNX Runtime (what RUNTIME=onnx serves) and, where this CPU accelerates
bf16, the artifact in bf16 (what PRECISION=auto serves there).

Every engine gets the same token ids, made by the served handler (tokenisation costs the same
for each, so it is left out), and one thread (the served layout: one worker per core). Rounds
alternate the engines, since these machines drift. It prints sentences/s per batch size for
each engine and round, the ratios of the medians, and the min cosine of the ONNX variant's
embeddings to torch's.

    .venv/bin/python -m benchmarks.onnx_runtime [--rounds 3] [--seconds 3] \
        [--batch-sizes 1 8 16 64] [--repository DIR]
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.bench import ensure_repository
from benchmarks.int8 import throughput
from loadtests.report import cpu_model
from service.packaging.bundled import minilm
from service.runtime.device import PrecisionChoice, cpu_bf16_flags
from service.runtime.handlers.text_embedding import TextEmbeddingHandler
from service.runtime.loading import load_module
from service.runtime.manifest import Manifest, OnnxVariant
from service.runtime.onnx_session import OnnxModule

Inputs = tuple[torch.Tensor, ...]


def _engines(
    directory: Path, manifest: Manifest, onnx: OnnxVariant, threads: int
) -> dict[str, Callable[..., Any]]:
    def artifact(precision: str) -> torch.nn.Module:
        choice = PrecisionChoice(precision, "bench")  # type: ignore[arg-type]
        cpu = torch.device("cpu")
        return load_module(directory / manifest.artifact, manifest.format, cpu, choice)

    engines: dict[str, Callable[..., Any]] = {
        "torch fp32": artifact("fp32"),
        "ONNX Runtime fp32": OnnxModule(directory / onnx.file, threads=threads),
    }
    if cpu_bf16_flags():
        engines["torch bf16"] = artifact("bf16")
    return engines


def main(argv: list[str] | None = None) -> int:
    from tests.sentences import PARAPHRASES, SENTENCES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 64])
    parser.add_argument("--threads", type=int, default=1, help="each engine's")
    parser.add_argument("--repository", type=Path, help="with minilm and its ONNX variant")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    directory = ensure_repository(args.repository, onnx=True) / "minilm" / "1"
    manifest = Manifest.read(directory)
    if manifest.onnx is None:
        raise SystemExit(f"{directory}: no ONNX variant (build the repository with --onnx)")
    opset = manifest.onnx.opset
    engines = _engines(directory, manifest, manifest.onnx, args.threads)
    handler = TextEmbeddingHandler(manifest, directory)
    accuracy_texts = SENTENCES + [text for triple in PARAPHRASES for text in triple]
    accuracy = handler.preprocess(accuracy_texts).inputs
    timed = {
        size: handler.preprocess([SENTENCES[i % len(SENTENCES)] for i in range(size)]).inputs
        for size in args.batch_sizes
    }
    with torch.inference_mode():
        reference = engines["torch fp32"](*accuracy)
        ours = engines["ONNX Runtime fp32"](*accuracy)
    cosine = float((reference * ours).sum(dim=1).min())  # both are normalised

    rates: dict[str, dict[int, list[float]]] = {name: {} for name in engines}
    for _ in range(args.rounds):
        for name, forward in engines.items():
            for size, inputs in timed.items():
                rates[name].setdefault(size, []).append(throughput(forward, inputs, args.seconds))

    import onnxruntime

    print(f"minilm, {args.threads} thread(s) per engine, torch {torch.__version__},"
          f" ONNX Runtime {onnxruntime.__version__} (opset {opset}), {cpu_model()}")  # fmt: skip
    print(f"{len(accuracy_texts)} texts: min cosine of the ONNX variant's embeddings to torch's"
          f" {cosine:.6f} (the model's bound: {minilm.MIN_COSINE})\n")  # fmt: skip
    others = [name for name in engines if name != "ONNX Runtime fp32"]
    header = " | ".join(f"{name}, sentences/s" for name in engines)
    ratios = " | ".join(f"ONNX Runtime ÷ {name}" for name in others)
    print(f"| batch | {header} | {ratios} |")
    print("|---:|" + "---|" * len(engines) + "---:|" * len(others))
    for size in timed:
        figures = " | ".join(" / ".join(f"{r:.0f}" for r in rates[name][size]) for name in engines)
        onnx = statistics.median(rates["ONNX Runtime fp32"][size])
        versus = " | ".join(f"{onnx / statistics.median(rates[n][size]):.2f}x" for n in others)
        print(f"| {size} | {figures} | {versus} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
