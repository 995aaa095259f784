"""The Open Inference Protocol's datatypes as numpy and torch types, and strict conversion.

Shared by the V2 tensor decoder and the handlers that take the model's own tensors, so that
`1.5` for an INT64 or `"7"` for an FP32 is refused the same way on every route.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from service.runtime.errors import InvalidInput

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
DATATYPE_OF_NUMPY = {
    np.dtype(v).name: k for k, v in NUMPY_DTYPES.items() if k not in ("BYTES", "BF16")
}
TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "UINT8": torch.uint8,
    "INT8": torch.int8,
    "INT16": torch.int16,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "FP16": torch.float16,
    "BF16": torch.bfloat16,
    "FP32": torch.float32,
    "FP64": torch.float64,
}
DATATYPE_OF_TORCH = {v: k for k, v in TORCH_DTYPES.items()}


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    dtype: np.dtype[Any] = np.dtype(NUMPY_DTYPES[datatype])
    return dtype


def to_numeric_array(data: Any, datatype: str, *, where: str) -> np.ndarray:
    """JSON numbers (nested lists) as a flat array of `datatype`; raises InvalidInput."""
    return numeric_array(data, datatype, where=where).reshape(-1)


def numeric_array(data: Any, datatype: str, *, where: str) -> np.ndarray:
    """JSON numbers (regularly nested lists) as an array of `datatype`, in their nesting's
    shape; strings, booleans for numbers, ragged lists and non-finite floats raise InvalidInput."""
    dtype = numpy_dtype(datatype)
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):
        raise InvalidInput(f"{where}: data is not a regular {datatype} tensor") from None
    if raw.dtype.kind not in "biuf":
        # Strings, objects, or ragged lists: never coerced ("7" is not a pixel).
        raise InvalidInput(f"{where}: data is not a regular {datatype} tensor")
    if dtype.kind in "iu" and raw.dtype.kind == "f":
        # numpy would truncate 1.5 to 1 without a word.
        raise InvalidInput(f"{where}: integer tensors take whole numbers only")
    if dtype.kind == "b" and raw.dtype.kind != "b":
        raise InvalidInput(f"{where}: BOOL tensors take true and false only")
    if dtype.kind != "b" and raw.dtype.kind == "b":
        raise InvalidInput(f"{where}: {datatype} tensors take numbers, not true or false")
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            array = raw.astype(dtype)
    except OverflowError:
        raise InvalidInput(f"{where}: values out of range for {dtype.name}") from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        raise InvalidInput(f"{where}: NaN, infinite or out-of-range values are not allowed")
    if dtype.kind in "iu" and not np.array_equal(array, raw):
        raise InvalidInput(f"{where}: values out of range for {dtype.name}")
    return array
