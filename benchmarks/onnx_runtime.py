"""ONNX Runtime against torch's own forward for minilm, side by side: would serving an ONNX export
on CPU win by a clear margin at equal accuracy?

Both engines get the same fp32 weights (ONNX Runtime an `optimum-cli` export of them, as
Infinity serves), the same token ids (tokenisation is left out: the server does it the same way
for either), one thread each (the served layout: one worker per core), and pool alike. Rounds
alternate the engines, since these machines drift. It prints sentences/s per batch size for
each engine and round, their ratio, and the min cosine of ONNX Runtime's embeddings to torch's.

    .venv/bin/python -m benchmarks.onnx_runtime [--rounds 3] [--seconds 3] [--batch-sizes 1 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.int8 import Inputs, load_fp32, throughput
from benchmarks.peers import OFFLINE, onnx_model_dir, peer_venv
from loadtests.report import cpu_model
from service.packaging.bundled import minilm

_FORWARD = Path(__file__).resolve().parent / "peers" / "ort_forward.py"


def _batch(texts: list[str], size: int) -> list[str]:
    return [texts[i % len(texts)] for i in range(size)]


def _write_inputs(path: Path, accuracy: Inputs, timed: dict[int, Inputs]) -> None:
    arrays = {"acc_ids": accuracy[0].numpy(), "acc_mask": accuracy[1].numpy()}
    for size, (ids, mask) in timed.items():
        arrays[f"b{size}_ids"], arrays[f"b{size}_mask"] = ids.numpy(), mask.numpy()
    np.savez(path, allow_pickle=False, **arrays)


def _onnx_runtime(
    model: Path, inputs: Path, embeddings: Path, seconds: float, threads: int
) -> dict[str, float]:
    python = peer_venv("infinity") / "bin" / "python"
    command = [str(python), str(_FORWARD), "--model", str(model), "--inputs", str(inputs)]
    command += ["--embeddings", str(embeddings), "--seconds", str(seconds)]
    command += ["--threads", str(threads)]
    env = {**os.environ, **OFFLINE}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"ONNX Runtime's forward failed:\n{completed.stderr[-3000:]}")
    rates: dict[str, float] = json.loads(completed.stdout.splitlines()[-1])["rates"]
    return rates


def main(argv: list[str] | None = None) -> int:
    from tests.sentences import PARAPHRASES, SENTENCES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--threads", type=int, default=1, help="each engine's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenise = load_fp32()
    accuracy_texts = SENTENCES + [text for triple in PARAPHRASES for text in triple]
    accuracy = tokenise(accuracy_texts)
    timed = {size: tokenise(_batch(SENTENCES, size)) for size in args.batch_sizes}
    with torch.inference_mode():
        reference = model(*accuracy).numpy()

    work = Path(tempfile.mkdtemp(prefix="torchdock-onnx-"))
    onnx = onnx_model_dir(minilm.source_dir(), work) / "model.onnx"
    inputs, embeddings = work / "inputs.npz", work / "embeddings.npy"
    _write_inputs(inputs, accuracy, timed)

    rates: dict[str, dict[int, list[float]]] = {"torch": {}, "onnxruntime": {}}
    for _ in range(args.rounds):
        for size, batch in timed.items():
            rates["torch"].setdefault(size, []).append(throughput(model, batch, args.seconds))
        measured = _onnx_runtime(onnx, inputs, embeddings, args.seconds, args.threads)
        for size in timed:
            rates["onnxruntime"].setdefault(size, []).append(measured[str(size)])
    theirs = np.load(embeddings)
    cosine = float((theirs * reference).sum(axis=1).min())  # both are normalised

    engines = f"{args.threads} thread(s) per engine, torch {torch.__version__}"
    print(f"minilm fp32, {engines}, {cpu_model()}")
    print(f"{len(accuracy_texts)} texts: min cosine of ONNX Runtime's embeddings to torch's"
          f" {cosine:.6f} (the model's bound: {minilm.MIN_COSINE})\n")  # fmt: skip
    print("| batch | torch, sentences/s | ONNX Runtime, sentences/s | ONNX Runtime ÷ torch |")
    print("|---:|---|---|---:|")
    for size in timed:
        ours, theirs_rates = rates["torch"][size], rates["onnxruntime"][size]
        ratio = statistics.median(theirs_rates) / statistics.median(ours)
        print(f"| {size} | {' / '.join(f'{r:.0f}' for r in ours)}"
              f" | {' / '.join(f'{r:.0f}' for r in theirs_rates)} | {ratio:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
