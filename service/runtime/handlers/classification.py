"""What every classifier shares: class probabilities out, a label and its name, cache encoding.

The exported graph ends in a softmax, so `postprocess` only picks the best class; V1 answers
with the label, its name, its score and the probabilities, V2 with `label` and `probabilities`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from service.runtime.handlers.base import Agreement, ModelHandler, Prepared
from service.runtime.manifest import Manifest

Item = TypeVar("Item")
_LABEL = struct.Struct("<H")


@dataclass(frozen=True, slots=True)
class Classification:
    label: int
    probabilities: np.ndarray


class ClassifierHandler(ModelHandler[Item, Classification], Generic[Item]):
    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        self.labels = manifest.labels or []
        probabilities = next(s for s in manifest.outputs if s.name == "probabilities")
        self.classes = probabilities.shape[-1]
        # The k best classes by name, in V1 answers, when the manifest asks for them.
        self.top_k = min(int(manifest.preprocessing.get("top_k", 0)), self.classes)

    def label_name(self, label: int) -> str:
        return self.labels[label] if self.labels else str(label)

    def predictions_to_json(self, predictions: Sequence[Classification]) -> list[Any]:
        answers = []
        for p in predictions:
            answer: dict[str, Any] = {
                "label": p.label,
                "label_name": self.label_name(p.label),
                "score": float(p.probabilities[p.label]),
                "probabilities": p.probabilities,
            }
            if self.top_k:
                best = np.argsort(-p.probabilities, kind="stable")[: self.top_k]
                answer["top_k"] = [
                    {"label": int(i), "label_name": self.label_name(int(i)),
                     "score": float(p.probabilities[i])}
                    for i in best
                ]  # fmt: skip
            answers.append(answer)
        return answers

    def predictions_to_tensors(
        self, predictions: Sequence[Classification]
    ) -> dict[str, np.ndarray]:
        return {
            "label": np.array([p.label for p in predictions], dtype=np.int64),
            "probabilities": np.stack([p.probabilities for p in predictions]),
        }

    def agreement(
        self, ours: Sequence[Classification], theirs: Sequence[Classification]
    ) -> Agreement:
        same = sum(a.label == b.label for a, b in zip(ours, theirs, strict=True))
        return Agreement("top1", same / len(ours) if ours else 1.0)

    def encode_prediction(self, prediction: Classification) -> bytes:
        return _LABEL.pack(prediction.label) + prediction.probabilities.astype("<f4").tobytes()

    def decode_prediction(self, data: bytes) -> Classification:
        if len(data) != _LABEL.size + 4 * self.classes:
            raise ValueError("not an encoded classification")
        (label,) = _LABEL.unpack_from(data)
        if label >= self.classes:
            raise ValueError("not an encoded classification: label out of range")
        return Classification(label, np.frombuffer(data, dtype="<f4", offset=_LABEL.size))

    def postprocess(self, outputs: Any, prepared: Prepared) -> list[Classification]:
        probabilities = outputs.float().numpy()
        labels = probabilities.argmax(axis=1)
        return [
            Classification(int(label), row)
            for label, row in zip(labels, probabilities, strict=True)
        ]
