"""`--module`: the user's factory, from a file or an installed module, returning an nn.Module."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from service.packaging.errors import PackagingError


def module_from_factory(reference: str) -> torch.nn.Module:
    """`path/to/file.py:factory` or `package.module:factory`, called with no arguments."""
    location, _, attribute = reference.rpartition(":")
    if not location or not attribute:
        raise PackagingError(f"--module {reference!r}: expected FILE.py:FACTORY or MODULE:FACTORY")
    namespace = _import(location)
    factory = getattr(namespace, attribute, None)
    if not callable(factory):
        raise PackagingError(f"--module {reference!r}: {attribute!r} is not a function there")
    try:
        module = factory()
    except Exception as e:  # the user's own code
        raise PackagingError(f"--module {reference!r}: the factory raised {e!r}") from e
    if not isinstance(module, torch.nn.Module):
        raise PackagingError(
            f"--module {reference!r}: the factory returned a {type(module).__name__},"
            " not an nn.Module"
        )
    return module


def _import(location: str) -> Any:
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise PackagingError(f"--module: {path} is missing")
        name = f"torchdock_user_model_{abs(hash(path.resolve()))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise PackagingError(f"--module: {path} cannot be imported")
        module = importlib.util.module_from_spec(spec)
        # Registered first, so that classes defined in the file can be found by name.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise PackagingError(f"--module: importing {path} raised {e!r}") from e
        return module
    try:
        return importlib.import_module(location)
    except ImportError as e:
        raise PackagingError(f"--module: cannot import {location!r}: {e}") from e
