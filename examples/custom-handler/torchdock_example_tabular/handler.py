"""TabularRiskHandler: the whole handler contract, for a model that takes standardised rows.

V1 clients send records by field name: `{"instances": [{"age": 41, "income": 52000,
"debt_ratio": 0.3}]}` and get `{"risk": 0.12, "decision": "approve"}` back. V2 clients send
the model's own tensor (`features`, already standardised) and get `risk`. The field order,
means, standard deviations and the decision threshold come from the manifest's
`preprocessing`, so a retrained model ships its own numbers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.runtime.errors import InvalidInput
from service.runtime.handlers.base import ModelHandler, Prepared
from service.runtime.manifest import Manifest

_RISK = struct.Struct("<f")


class TabularRiskHandler(ModelHandler[np.ndarray, float]):
    """Items are standardised feature rows (float32); predictions are risks in [0, 1]."""

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        pre = manifest.preprocessing
        self.fields: list[str] = list(pre["fields"])
        self.mean = np.asarray(pre["mean"], dtype=np.float32)
        self.std = np.asarray(pre["std"], dtype=np.float32)
        self.threshold = float(pre["threshold"])

    # Event loop: decoding and encoding, cheap and strict ---------------------------------

    def instances_from_json(self, instances: Sequence[Any]) -> list[np.ndarray]:
        return [self._row(i, record) for i, record in enumerate(instances)]

    def _row(self, index: int, record: Any) -> np.ndarray:
        if not isinstance(record, dict) or set(record) != set(self.fields):
            raise InvalidInput(f"instance {index}: expected an object with {self.fields}")
        values = [record[name] for name in self.fields]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise InvalidInput(f"instance {index}: every field is a number")
        if not all(math.isfinite(v) for v in values):
            raise InvalidInput(f"instance {index}: NaN or infinite values are not allowed")
        standardised: np.ndarray = (np.asarray(values, dtype=np.float32) - self.mean) / self.std
        return standardised

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return list(tensors[self.manifest.inputs[0].name].astype(np.float32, copy=False))

    def predictions_to_json(self, predictions: Sequence[float]) -> list[Any]:
        return [
            {"risk": round(p, 6), "decision": "refer" if p >= self.threshold else "approve"}
            for p in predictions
        ]

    def predictions_to_tensors(self, predictions: Sequence[float]) -> dict[str, np.ndarray]:
        return {self.manifest.outputs[0].name: np.asarray(predictions, dtype=np.float32)}

    # The cache: a canonical key per instance, and a compact value ------------------------

    def instance_key(self, item: np.ndarray) -> bytes:
        return item.astype("<f4").tobytes()

    def encode_prediction(self, prediction: float) -> bytes:
        return _RISK.pack(prediction)

    def decode_prediction(self, data: bytes) -> float:
        if len(data) != _RISK.size:
            raise ValueError("not an encoded risk")
        (risk,) = _RISK.unpack(data)
        if not 0.0 <= risk <= 1.0:
            raise ValueError("not an encoded risk")
        return float(risk)

    # Torch thread: around the forward pass -----------------------------------------------

    def preprocess(self, items: list[np.ndarray]) -> Prepared:
        return Prepared((torch.from_numpy(np.stack(items)),))

    def postprocess(self, outputs: Any, prepared: Prepared) -> list[float]:
        return [float(r) for r in torch.sigmoid(outputs.float()).tolist()]

    def warmup_items(self) -> list[np.ndarray]:
        return [np.zeros(len(self.fields), dtype=np.float32)]
