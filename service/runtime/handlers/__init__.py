"""Handlers by task: the manifest's `task` picks the handler class."""

from __future__ import annotations

from typing import Any

from service.runtime.handlers.base import ModelHandler
from service.runtime.handlers.image_classifier import ImageClassifierHandler
from service.runtime.manifest import Manifest, Task

HANDLERS: dict[Task, type[ModelHandler[Any, Any]]] = {
    "image-classification": ImageClassifierHandler,
}


def handler_for(manifest: Manifest) -> ModelHandler[Any, Any]:
    try:
        return HANDLERS[manifest.task](manifest)
    except KeyError:
        raise ValueError(f"no handler for task {manifest.task!r}") from None
