"""`torchdock build-models`: build every bundled model into a model repository."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from service.runtime.manifest import Manifest, ModelPrecision

BUNDLED = ("digits", "minilm")


def _builder(name: str) -> Callable[..., Manifest]:
    if name == "digits":
        from service.packaging.bundled import digits

        return digits.build
    if name == "minilm":
        from service.packaging.bundled import minilm

        return minilm.build
    raise ValueError(f"unknown bundled model {name!r} (known: {', '.join(BUNDLED)})")


def build_models(
    output: Path,
    *,
    names: tuple[str, ...] = BUNDLED,
    version: int = 1,
    compile: tuple[ModelPrecision, ...] = (),
    onnx: bool = False,
) -> list[Manifest]:
    output.mkdir(parents=True, exist_ok=True)
    return [_builder(name)(output, version=version, compile=compile, onnx=onnx) for name in names]
