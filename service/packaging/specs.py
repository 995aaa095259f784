"""Tensor specs for the manifest, read from example tensors or from an exported graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.export.graph_signature import OutputKind

from service.packaging.errors import PackagingError
from service.runtime.dtypes import DATATYPE_OF_TORCH
from service.runtime.manifest import TensorSpec


def datatype_of(dtype: torch.dtype, *, where: str) -> str:
    try:
        return DATATYPE_OF_TORCH[dtype]
    except KeyError:
        raise PackagingError(
            f"{where}: dtype {dtype} has no Open Inference Protocol type"
        ) from None


def spec_of(name: str, value: Any, *, where: str) -> TensorSpec:
    """A spec whose first dimension is the batch; symbolic dimensions become -1."""
    if not isinstance(value, torch.Tensor):
        raise PackagingError(f"{where}: expected a tensor, got {type(value).__name__}")
    if value.dim() == 0:
        raise PackagingError(f"{where}: a scalar has no batch dimension")
    rest = [d if isinstance(d, int) else -1 for d in value.shape[1:]]
    return TensorSpec(name=name, datatype=datatype_of(value.dtype, where=where), shape=[-1, *rest])


def named_specs(
    values: Sequence[Any], names: Sequence[str] | None, *, kind: str
) -> list[TensorSpec]:
    chosen = _checked_names(names, len(values), kind=kind)
    return [
        spec_of(name, value, where=f"{kind} {name!r}")
        for name, value in zip(chosen, values, strict=True)
    ]


def renamed(specs: list[TensorSpec], names: Sequence[str] | None, *, kind: str) -> list[TensorSpec]:
    """`specs` under the given names (`--input-name`, `--output-name`), or as they are."""
    if names is None:
        return specs
    chosen = _checked_names(names, len(specs), kind=kind)
    return [spec.model_copy(update={"name": n}) for spec, n in zip(specs, chosen, strict=True)]


def _checked_names(names: Sequence[str] | None, count: int, *, kind: str) -> list[str]:
    if names is not None and len(names) != count:
        raise PackagingError(f"{len(names)} {kind} names given for {count} {kind}s")
    chosen = list(names) if names is not None else default_names(kind, count)
    if len(set(chosen)) != len(chosen):
        raise PackagingError(f"{kind} names must differ: {chosen}")
    return chosen


def default_names(kind: str, count: int) -> list[str]:
    return [kind] if count == 1 else [f"{kind}_{i}" for i in range(count)]


def as_tuple(outputs: Any) -> tuple[Any, ...]:
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)


def exported_specs(
    program: torch.export.ExportedProgram,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs by their placeholder names, outputs by position, from the graph's own metadata."""
    nodes = {node.name: node for node in program.graph.nodes}
    inputs = [
        spec_of(name, nodes[name].meta.get("val"), where=f"input {name!r}")
        for name in program.graph_signature.user_inputs
    ]
    user_outputs = [
        spec.arg.name
        for spec in program.graph_signature.output_specs
        if spec.kind == OutputKind.USER_OUTPUT and hasattr(spec.arg, "name")
    ]
    names = default_names("output", len(user_outputs))
    outputs = [
        spec_of(name, nodes[node].meta.get("val"), where=f"output {name!r}")
        for name, node in zip(names, user_outputs, strict=True)
    ]
    return inputs, outputs
