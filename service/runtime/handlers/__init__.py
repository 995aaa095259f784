"""Handlers by name: the manifest's `handler` (or else its `task`) picks the handler class.

Built-in handlers register in the entry point group `torchdock.handlers` exactly as a user's
package does, so that a custom handler needs no change here. A manifest may also name a class
as `package.module:Class`; either way only installed code is imported, never a file from the
model repository.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from service.runtime.errors import ModelLoadError
from service.runtime.handlers.base import ModelHandler
from service.runtime.manifest import Manifest

ENTRY_POINT_GROUP = "torchdock.handlers"
HandlerClass = type[ModelHandler[Any, Any]]


def registered_handlers() -> list[str]:
    """The names a manifest's `task` or `handler` may use without a `module:Class` path."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve_handler(reference: str) -> HandlerClass:
    if ":" in reference:
        module_name, _, attribute = reference.partition(":")
        try:
            found: Any = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as e:
            raise ModelLoadError(f"handler {reference!r} cannot be imported: {e}") from e
    else:
        matches = entry_points(group=ENTRY_POINT_GROUP, name=reference)
        if not matches:
            raise ModelLoadError(
                f"no handler named {reference!r} (registered: {', '.join(registered_handlers())})"
            )
        if len(matches) > 1:
            owners = sorted(ep.value for ep in matches)
            raise ModelLoadError(f"handler {reference!r} is registered twice: {owners}")
        (entry,) = matches
        found = entry.load()
    if not (isinstance(found, type) and issubclass(found, ModelHandler)):
        raise ModelLoadError(f"handler {reference!r} is not a ModelHandler subclass")
    return found


def handler_for(manifest: Manifest, directory: Path) -> ModelHandler[Any, Any]:
    return resolve_handler(manifest.handler or manifest.task)(manifest, directory)
