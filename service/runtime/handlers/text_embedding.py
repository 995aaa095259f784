"""Sentence embeddings (the bundled `minilm` model): texts in, L2-normalised vectors out."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.handlers.base import Agreement, ModelHandler, Prepared
from service.runtime.handlers.text import TextInputs, TextItems
from service.runtime.manifest import Manifest

_HEADER = struct.Struct("<H?")


@dataclass(frozen=True, slots=True)
class Embedding:
    vector: np.ndarray
    tokens: int
    truncated: bool


class TextEmbeddingHandler(TextItems, ModelHandler[str, Embedding]):
    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        self.text = TextInputs(self)

    def predictions_to_json(self, predictions: Sequence[Embedding]) -> list[Any]:
        return [
            {"embedding": p.vector, "tokens": p.tokens, "truncated": p.truncated}
            for p in predictions
        ]

    def predictions_to_tensors(self, predictions: Sequence[Embedding]) -> dict[str, np.ndarray]:
        return {
            "embedding": np.stack([p.vector for p in predictions]),
            "truncated": np.array([p.truncated for p in predictions], dtype=np.bool_),
        }

    def agreement(self, ours: Sequence[Embedding], theirs: Sequence[Embedding]) -> Agreement:
        cosines = [
            float(np.dot(a.vector, b.vector))
            / max(float(np.linalg.norm(a.vector) * np.linalg.norm(b.vector)), 1e-12)
            for a, b in zip(ours, theirs, strict=True)
        ]
        return Agreement("cosine", float(np.mean(cosines)) if cosines else 1.0)

    def encode_prediction(self, prediction: Embedding) -> bytes:
        header = _HEADER.pack(prediction.tokens, prediction.truncated)
        return header + prediction.vector.astype("<f4").tobytes()

    def decode_prediction(self, data: bytes) -> Embedding:
        if len(data) <= _HEADER.size or (len(data) - _HEADER.size) % 4:
            raise ValueError("not an encoded embedding")
        tokens, truncated = _HEADER.unpack_from(data)
        vector = np.frombuffer(data, dtype="<f4", offset=_HEADER.size)
        return Embedding(vector, tokens, truncated)

    def postprocess(self, outputs: Any, prepared: Prepared) -> list[Embedding]:
        vectors = outputs.float().numpy()
        counts, truncated = prepared.context
        return [
            Embedding(vector, int(count), flag)
            for vector, count, flag in zip(vectors, counts, truncated, strict=True)
        ]

    def warmup_items(self) -> list[str]:
        return ["warm-up sentence for the embedding model"]
