"""Text classification (a BERT-family sequence classifier): texts in, labels and scores out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.runtime.handlers.base import Prepared
from service.runtime.handlers.classification import ClassifierHandler
from service.runtime.handlers.text import TextInputs
from service.runtime.manifest import Manifest


class TextClassifierHandler(ClassifierHandler[str]):
    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        self.text = TextInputs(self)

    def instances_from_json(self, instances: Sequence[Any]) -> list[str]:
        return self.text.from_json(instances)

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[str]:
        return self.text.from_tensors(tensors)

    def instance_key(self, item: str) -> bytes:
        return item.encode("utf-8")

    def preprocess(self, items: list[str]) -> Prepared:
        return self.text.preprocess(items)

    def preprocess_in_passes(self, items: list[str]) -> list[tuple[list[int], Prepared]]:
        return self.text.in_passes(items)

    def warmup_items(self) -> list[str]:
        return ["warm-up sentence for the classifier"]
