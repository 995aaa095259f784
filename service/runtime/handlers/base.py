"""The per-task contract. Adding a model means one handler and one manifest, nothing else.

Decoding and encoding (`*_from_*`, `*_to_*`) run on the event loop and must be cheap, unless
the handler sets `blocking_decode` (images, token counts): its `instances_from_*` then run on a
decode thread. `preprocess` and `postprocess` run on the torch thread, around the forward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch

from service.runtime.errors import ModelLoadError
from service.runtime.manifest import Manifest

Item = TypeVar("Item")
Pred = TypeVar("Pred")


@dataclass(frozen=True, slots=True)
class Agreement:
    """How close two versions' predictions on the same instances are. `top1` and `cosine` go
    from 0 to 1 (1: the same); `max_abs_diff` from 0 (the same) up."""

    kind: str
    value: float


@dataclass(frozen=True, slots=True)
class Prepared:
    """The model's CPU input tensors, and what postprocess needs to know about them."""

    inputs: tuple[torch.Tensor, ...]
    context: Any = None


class ModelHandler(ABC, Generic[Item, Pred]):
    blocking_decode: ClassVar[bool] = False

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        self.manifest = manifest
        self.directory = directory

    def file(self, name: str) -> Path:
        """A file of this version that the manifest lists, and so was checked at load."""
        if name not in self.manifest.files:
            raise ModelLoadError(f"{name!r} is not among the manifest's files")
        return self.directory / name

    @abstractmethod
    def instances_from_json(self, instances: Sequence[Any]) -> list[Item]:
        """V1 instances to items; raises InvalidInput naming the bad instance."""

    @abstractmethod
    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[Item]:
        """V2 input tensors (already checked against the manifest's specs) to items."""

    @abstractmethod
    def predictions_to_json(self, predictions: Sequence[Pred]) -> list[Any]:
        """Task-level V1 predictions."""

    @abstractmethod
    def predictions_to_tensors(self, predictions: Sequence[Pred]) -> dict[str, np.ndarray]:
        """V2 output tensors by output name, batch dimension first."""

    @abstractmethod
    def instance_key(self, item: Item) -> bytes:
        """A canonical encoding of one decoded instance: equal inputs give equal bytes."""

    @abstractmethod
    def encode_prediction(self, prediction: Pred) -> bytes:
        """A compact binary form of one prediction, for the cache."""

    @abstractmethod
    def decode_prediction(self, data: bytes) -> Pred:
        """The inverse of `encode_prediction`; raises ValueError on foreign bytes."""

    @abstractmethod
    def preprocess(self, items: list[Item]) -> Prepared:
        """Items to the model's CPU input tensors (torch thread)."""

    def preprocess_in_passes(self, items: list[Item]) -> list[tuple[list[int], Prepared]]:
        """The batch as forward passes, each with the positions of its items (torch thread).
        One pass by default; a handler whose cost grows with padding splits the batch."""
        return [(list(range(len(items))), self.preprocess(items))]

    def place(self, device: torch.device) -> None:
        """Told, before warm-up, the device that runs the model: a handler whose passes weigh
        padding against another pass (text) weighs them for it. Nothing to do by default."""

    @abstractmethod
    def postprocess(self, outputs: Any, prepared: Prepared) -> list[Pred]:
        """The model's outputs (already on the CPU) to one prediction per item (torch thread)."""

    @abstractmethod
    def warmup_items(self) -> list[Item]:
        """Representative inputs for the warm-up forward that gates readiness."""

    def agreement(self, ours: Sequence[Pred], theirs: Sequence[Pred]) -> Agreement:
        """How far another version's predictions are from these (shadow rollouts): by default,
        the largest absolute difference of any output; a task with a better measure overrides it."""
        a, b = self.predictions_to_tensors(ours), self.predictions_to_tensors(theirs)
        diffs = [
            float(np.max(np.abs(a[name].astype(np.float64) - b[name].astype(np.float64))))
            if a[name].shape == b[name].shape
            else float("inf")
            for name in a
            if name in b and a[name].size
        ]
        return Agreement("max_abs_diff", max(diffs, default=0.0))
