"""Refuse model artifacts that can run code when loaded, before torch ever opens them.

A sha256 in the manifest proves only that the files match a manifest in the same unsigned
directory; whoever can write the repository can write both. What loading may do must therefore
be decided by the bytes themselves:

- torch.export archives (`.pt2`) hold a JSON graph and raw tensor bytes, which cannot run code.
  Three things in them can: weights or constants saved with `use_pickle` (torch loads those
  with `weights_only=False`), an AOTInductor shared library, and the sample inputs, which torch
  loads with the weights-only unpickler but retries with the full one if that fails.
- TorchScript archives hold pickles that torch's C++ unpickler reads; a global outside torch's
  own namespaces has no business in them.

Anything that can run code is refused unless the operator sets ALLOW_PICKLED_ARTIFACTS.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import pickletools
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from service.runtime.errors import ModelLoadError

logger = logging.getLogger(__name__)

# The modules whose names a TorchScript archive's pickles legitimately reference.
_TORCHSCRIPT_GLOBAL_PREFIXES = ("__torch__.", "torch.", "torch ", "collections OrderedDict")


def check_artifact(artifact: Path, artifact_format: str, *, allow_code: bool) -> None:
    """Raise ModelLoadError naming the first payload in `artifact` that could run code."""
    try:
        with zipfile.ZipFile(artifact) as archive:
            findings = list(
                _torchscript_findings(archive)
                if artifact_format == "torchscript"
                else _export_findings(archive)
            )
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelLoadError(f"{artifact.name}: not a readable archive: {e}") from e
    if not findings:
        return
    if allow_code:
        for finding in findings:
            logger.warning(
                "loading an artifact that can run code (ALLOW_PICKLED_ARTIFACTS=true)",
                extra={"artifact": artifact.name, "finding": finding},
            )
        return
    raise ModelLoadError(
        f"{artifact.name}: refused, it can run code when loaded ({findings[0]}); set"
        " ALLOW_PICKLED_ARTIFACTS=true only for artifacts from a source you trust"
    )


def _export_findings(archive: zipfile.ZipFile) -> Iterator[str]:
    for name in archive.namelist():
        if "/data/aotinductor/" in name and name.endswith(".so"):
            yield f"{name} is a compiled shared library"
        elif name.endswith(("model_weights_config.json", "model_constants_config.json")):
            yield from _pickled_entries(archive, name)
        elif _is_sample_inputs(name) and not _loads_weights_only(archive.read(name)):
            yield f"{name} needs the full unpickler"


def _is_sample_inputs(name: str) -> bool:
    # The second form is the archive layout of torch releases before 2.6.
    return "/data/sample_inputs/" in name or name.endswith("serialized_example_inputs.pt")


def _pickled_entries(archive: zipfile.ZipFile, config_name: str) -> Iterator[str]:
    try:
        entries = json.loads(archive.read(config_name))["config"]
    except (ValueError, KeyError, TypeError):
        yield f"{config_name} is not a weights config"
        return
    for fqn, meta in entries.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") is not False:
            yield f"{fqn} is stored as a pickle ({config_name})"


def _loads_weights_only(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception:  # weights_only raises UnpicklingError, RuntimeError and more
        return False
    return True


def _torchscript_findings(archive: zipfile.ZipFile) -> Iterator[str]:
    for name in archive.namelist():
        if not name.endswith(".pkl"):
            continue
        for global_name in pickle_globals(archive.read(name)):
            if not global_name.startswith(_TORCHSCRIPT_GLOBAL_PREFIXES):
                yield f"{name} references {global_name}"


def pickle_globals(data: bytes) -> list[str]:
    """The `module name` of every global a pickle imports, read without unpickling it.

    STACK_GLOBAL takes its module and name from the stack; unless the two values pushed last
    are strings (or memo reads of strings), the name is reported as computed, which no
    allow-list matches.
    """
    found: list[str] = []
    pushed: list[str | None] = []
    memo: dict[object, str | None] = {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                found.append(str(arg))
            elif name == "STACK_GLOBAL":
                last = pushed[-2:]
                known = len(last) == 2 and all(isinstance(v, str) for v in last)
                found.append(" ".join(str(v) for v in last) if known else "<computed name>")
            if "UNICODE" in name or "STRING" in name:
                pushed.append(str(arg))
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(arg))
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = pushed[-1] if pushed else None
            elif name not in ("PROTO", "FRAME"):
                pushed.append(None)
    except (ValueError, pickle.UnpicklingError, EOFError) as e:
        found.append(f"<unreadable pickle: {e}>")
    return found
