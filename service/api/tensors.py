"""JSON tensors of the Open Inference Protocol to numpy and back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.schemas import RequestInput
from service.runtime.dtypes import DATATYPE_OF_NUMPY, to_numeric_array
from service.runtime.errors import InvalidInput
from service.runtime.manifest import TensorSpec


def decode_inputs(
    inputs: Sequence[RequestInput], specs: Sequence[TensorSpec]
) -> dict[str, np.ndarray]:
    """Check each input against the model's spec, then build its array. All share one batch size."""
    by_name = {spec.name: spec for spec in specs}
    given = [i.name for i in inputs]
    if len(set(given)) != len(given):
        raise InvalidInput("an input name appears more than once")
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        raise InvalidInput(f"unknown input(s) {unknown}; this model takes {sorted(by_name)}")
    missing = sorted(set(by_name) - set(given))
    if missing:
        raise InvalidInput(f"missing input(s) {missing}")
    arrays = {i.name: _decode_one(i, by_name[i.name]) for i in inputs}
    batch_sizes = {a.shape[0] for a in arrays.values()}
    if len(batch_sizes) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(batch_sizes)}")
    if batch_sizes == {0}:
        raise InvalidInput("the batch is empty")
    return arrays


def _decode_one(tensor: RequestInput, spec: TensorSpec) -> np.ndarray:
    where = f"input {tensor.name!r}"
    if tensor.datatype != spec.datatype:
        raise InvalidInput(f"{where}: datatype {tensor.datatype}, expected {spec.datatype}")
    if len(tensor.shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, tensor.shape, strict=True)
    ):
        raise InvalidInput(f"{where}: shape {tensor.shape} does not fit {spec.shape}")
    expected = math.prod(tensor.shape)
    data = tensor.data if isinstance(tensor.data, list) else [tensor.data]
    if spec.datatype == "BYTES":
        try:
            flat = _flatten_strings(data)
        except TypeError:
            raise InvalidInput(f"{where}: data is not a regular BYTES tensor") from None
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        array = to_numeric_array(data, spec.datatype, where=where)
    if array.size != expected:
        raise InvalidInput(f"{where}: {array.size} values do not fill shape {tensor.shape}")
    return array.reshape(tensor.shape)


def _flatten_strings(data: list[Any]) -> list[str]:
    flat: list[str] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            if not isinstance(value, str):
                raise TypeError("BYTES data must be strings")
            flat.append(value)
        else:
            stack.pop()
    return flat


def select_outputs(
    specs: Sequence[TensorSpec], requested: Sequence[str] | None
) -> list[TensorSpec]:
    """The outputs to return, in the manifest's order; all of them when none are requested."""
    if requested is None:
        return list(specs)
    names = [spec.name for spec in specs]
    unknown = sorted(set(requested) - set(names))
    if unknown:
        raise InvalidInput(f"unknown output(s) {unknown}; this model has {names}")
    return [spec for spec in specs if spec.name in requested]


def encode_outputs(
    arrays: Mapping[str, np.ndarray], selected: Sequence[TensorSpec]
) -> list[dict[str, Any]]:
    encoded = []
    for spec in selected:
        array = arrays[spec.name]
        is_bytes = spec.datatype == "BYTES"
        datatype = spec.datatype if is_bytes else DATATYPE_OF_NUMPY[array.dtype.name]
        encoded.append(
            {
                "name": spec.name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.reshape(-1),
            }
        )
    return encoded
