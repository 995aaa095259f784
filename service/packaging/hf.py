"""`--hf DIR`: a local Hugging Face BERT directory (config.json, model.safetensors, tokenizer.json).

No network and no pickles: weights are read from safetensors only. A sentence-transformers
directory says its pooling (1_Pooling/config.json) and whether it normalises (modules.json);
its max_seq_length bounds the tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from service.packaging import agreement
from service.packaging.bert import (
    BertConfig,
    MeanPooledEmbedder,
    SequenceClassifier,
    load_bert_weights,
)
from service.packaging.errors import PackagingError
from service.packaging.package import PackageRequest, package_module
from service.runtime.manifest import Manifest, TensorSpec

TASKS = ("text-embedding", "text-classification")
MAX_CHARS = 20_000
# Varied sentences to measure reduced-precision agreement at package time.
CALIBRATION = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it this weekend.",
    "How do I reset my password if I no longer have access to my email?",
    "Quantum entanglement links particles across arbitrary distances.",
    "The quarterly revenue grew by 12 percent compared with last year.",
    "¿Dónde está la biblioteca?",
    "ok",
    "Two dogs are playing in the snow while their owner watches from a bench nearby, holding a"
    " cup of coffee and laughing at how clumsy the younger dog is in the deep powder.",
]


def package_hf(directory: Path, task: str, request: PackageRequest) -> Manifest:
    if task not in TASKS:
        raise PackagingError(f"--hf takes --task {' or '.join(TASKS)}, not {task!r}")
    for required in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (directory / required).is_file():
            raise PackagingError(f"{directory / required} is missing (safetensors weights only)")
    config = BertConfig.read(directory / "config.json")
    module: torch.nn.Module
    if task == "text-embedding":
        module = MeanPooledEmbedder(config, normalize=_normalizes(directory))
        outputs = [
            TensorSpec(name="embedding", datatype="FP32", shape=[-1, config.hidden]),
            TensorSpec(name="truncated", datatype="BOOL", shape=[-1]),
        ]
        request.agreement = agreement.MIN_COSINE
    else:
        module = SequenceClassifier(config)
        classes = len(config.id2label) or 2
        outputs = [
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, classes]),
        ]
        request.labels = [config.id2label.get(i, str(i)) for i in range(classes)]
        request.preprocessing = {"top_k": min(5, classes), **request.preprocessing}
        request.agreement = agreement.TOP1
    load_bert_weights(module, _safetensors(directory / "model.safetensors"), config.layers)
    max_tokens = min(_max_seq_length(directory) or config.max_positions, config.max_positions)
    pad_id = _pad_id(directory / "tokenizer.json")
    request.task = task
    request.inputs = [TensorSpec(name="text", datatype="BYTES", shape=[-1])]
    request.outputs = outputs
    request.extra_files = {"tokenizer.json": directory / "tokenizer.json"}
    request.preprocessing = {
        "tokenizer": "tokenizer.json",
        "max_tokens": max_tokens,
        "max_chars": MAX_CHARS,
        "pad_id": pad_id,
        **request.preprocessing,
    }
    request.metrics = {"dimensions": config.hidden, "layers": config.layers, **request.metrics}
    request.source = {"hf_directory": directory.name, **request.source}
    ids, mask = tokenize(directory / "tokenizer.json", CALIBRATION, max_tokens, pad_id)
    request.calibration = (ids, mask)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=2, max=max_tokens)
    return package_module(
        module.eval(),
        (ids[:2, :10].contiguous(), mask[:2, :10].contiguous()),
        request,
        dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
    )


def tokenize(
    tokenizer_file: Path, texts: list[str], max_tokens: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.enable_padding(pad_id=pad_id, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return ids, mask


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except Exception as e:  # safetensors raises its own error types
        raise PackagingError(f"{path}: not a safetensors file: {e}") from e


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError as e:
        raise PackagingError(f"{path}: not JSON: {e}") from e


def _normalizes(directory: Path) -> bool:
    modules = _read_json(directory / "modules.json") or []
    pooling = _read_json(directory / "1_Pooling" / "config.json") or {}
    if pooling and not pooling.get("pooling_mode_mean_tokens", False):
        raise PackagingError("only mean pooling is supported for text-embedding")
    return any(str(m.get("type", "")).endswith("Normalize") for m in modules)


def _max_seq_length(directory: Path) -> int | None:
    config = _read_json(directory / "sentence_bert_config.json") or {}
    value = config.get("max_seq_length")
    return int(value) if value else None


def _pad_id(tokenizer_file: Path) -> int:
    raw = _read_json(tokenizer_file) or {}
    padding = raw.get("padding") or {}
    if "pad_id" in padding:
        return int(padding["pad_id"])
    vocab = (raw.get("model") or {}).get("vocab") or {}
    return int(vocab.get("[PAD]", 0)) if isinstance(vocab, dict) else 0
