"""JSON tensors of the Open Inference Protocol to numpy and back."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.schemas import RequestInput
from service.runtime.errors import InvalidInput
from service.runtime.manifest import TensorSpec

NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    # numpy has no bfloat16: JSON BF16 values are decoded as float32; the model casts them.
    "BF16": np.float32,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
_DATATYPE_OF = {np.dtype(v).name: k for k, v in NUMPY_DTYPES.items() if k not in ("BYTES", "BF16")}


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
    try:
        if spec.datatype == "BYTES":
            flat = _flatten_strings(data)
            array = np.empty(len(flat), dtype=object)
            array[:] = flat
        else:
            array = _numeric(data, np.dtype(NUMPY_DTYPES[spec.datatype]), where=where)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{where}: data is not a regular {spec.datatype} tensor") from None
    if array.size != expected:
        raise InvalidInput(f"{where}: {array.size} values do not fill shape {tensor.shape}")
    return array.reshape(tensor.shape)


def _numeric(data: list[Any], dtype: np.dtype[Any], *, where: str) -> np.ndarray:
    raw = np.asarray(data).reshape(-1)
    if raw.dtype.kind not in "biuf":
        raise TypeError("not numbers")
    if dtype.kind in "iu" and raw.dtype.kind == "f":
        # numpy would truncate 1.5 to 1 without a word.
        raise InvalidInput(f"{where}: integer tensors take whole numbers only")
    if dtype.kind == "b" and raw.dtype.kind != "b":
        raise InvalidInput(f"{where}: BOOL tensors take true and false only")
    with np.errstate(over="ignore", invalid="ignore"):
        array = raw.astype(dtype)
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: NaN, infinite or out-of-range values are not allowed")
    if dtype.kind in "iu" and not np.array_equal(array, raw):
        raise InvalidInput(f"{where}: values out of range for {dtype.name}")
    return array


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
        datatype = spec.datatype if spec.datatype == "BYTES" else _DATATYPE_OF[array.dtype.name]
        encoded.append(
            {
                "name": spec.name,
                "datatype": datatype,
                "shape": list(array.shape),
                "data": array.reshape(-1),
            }
        )
    return encoded
