"""Handlers by task: the manifest's `task` picks the handler class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.runtime.handlers.base import ModelHandler
from service.runtime.handlers.image_classifier import ImageClassifierHandler
from service.runtime.handlers.text_embedding import TextEmbeddingHandler
from service.runtime.manifest import Manifest, Task

HANDLERS: dict[Task, type[ModelHandler[Any, Any]]] = {
    "image-classification": ImageClassifierHandler,
    "text-embedding": TextEmbeddingHandler,
}


def handler_for(manifest: Manifest, directory: Path) -> ModelHandler[Any, Any]:
    try:
        return HANDLERS[manifest.task](manifest, directory)
    except KeyError:
        raise ValueError(f"no handler for task {manifest.task!r}") from None
