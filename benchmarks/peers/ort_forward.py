"""ONNX Runtime's forward of minilm, run by benchmarks/onnx_runtime.py with the Python of the
Infinity peer's venv (which has onnxruntime; the project's does not).

It reads the token ids the parent made (an .npz), so that both engines see the same inputs,
pools as torchdock pools (the mask-weighted mean, normalised), writes the embeddings of the
accuracy texts, and prints one JSON object: sentences per second at each batch size.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort


def mean_pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    normalised: np.ndarray = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    return normalised


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the .onnx file")
    parser.add_argument("--inputs", required=True, help=".npz of acc_ids/acc_mask, b<N>_ids/mask")
    parser.add_argument("--embeddings", required=True, help="where to write the .npy")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    wants_types = any(i.name == "token_type_ids" for i in session.get_inputs())

    def embed(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        if wants_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        return mean_pooled(session.run(None, feed)[0], mask)

    data = np.load(args.inputs)
    np.save(args.embeddings, embed(data["acc_ids"], data["acc_mask"]))
    rates: dict[str, float] = {}
    for key in sorted(k for k in data.files if k.startswith("b") and k.endswith("_ids")):
        batch = key[1:-4]
        ids, mask = data[key], data[f"b{batch}_mask"]
        for _ in range(3):
            embed(ids, mask)
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < args.seconds:
            embed(ids, mask)
            done += ids.shape[0]
        rates[batch] = done / (time.perf_counter() - began)
    print(json.dumps({"rates": rates, "onnxruntime": ort.__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
