"""Text classification (a BERT-family sequence classifier): texts in, labels and scores out."""

from __future__ import annotations

from pathlib import Path

from service.runtime.handlers.classification import ClassifierHandler
from service.runtime.handlers.text import TextInputs, TextItems
from service.runtime.manifest import Manifest


class TextClassifierHandler(TextItems, ClassifierHandler[str]):
    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        self.text = TextInputs(self)

    def warmup_items(self) -> list[str]:
        return ["warm-up sentence for the classifier"]
