"""`--example-input` values: a `.pt`, `.npy` or `.npz` file, or DTYPE:SHAPE to fill randomly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from service.packaging.errors import PackagingError

_SPEC = re.compile(r"^(?P<dtype>[a-z0-9]+):(?P<shape>\d+(?:x\d+)*)$")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def parse_example_inputs(values: list[str], *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """One tensor per value, in the model's argument order (a file may hold several)."""
    generator = torch.Generator().manual_seed(seed)
    tensors: list[torch.Tensor] = []
    for value in values:
        match = _SPEC.match(value)
        if match:
            tensors.append(_random(match["dtype"], match["shape"], generator))
        else:
            tensors.extend(_from_file(Path(value)))
    if not tensors:
        raise PackagingError("no example input given (--example-input)")
    return tuple(tensors)


def _random(dtype_name: str, shape_text: str, generator: torch.Generator) -> torch.Tensor:
    dtype = _DTYPES.get(dtype_name)
    if dtype is None:
        raise PackagingError(
            f"example input dtype {dtype_name!r} is not one of {', '.join(_DTYPES)}"
        )
    shape = [int(d) for d in shape_text.split("x")]
    if dtype.is_floating_point:
        return torch.randn(shape, generator=generator).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(0, 100, shape, generator=generator).to(dtype)


def _from_file(path: Path) -> list[torch.Tensor]:
    if not path.is_file():
        raise PackagingError(f"example input {path} is neither a file nor DTYPE:SHAPE")
    try:
        if path.suffix == ".npy":
            return [torch.from_numpy(np.load(path, allow_pickle=False))]
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                return [torch.from_numpy(arrays[key]) for key in arrays.files]
        loaded = torch.load(path, weights_only=True)
    except Exception as e:  # numpy and torch raise many types for a file they cannot read
        raise PackagingError(f"example input {path}: unreadable: {e}") from e
    if isinstance(loaded, torch.Tensor):
        return [loaded]
    if isinstance(loaded, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in loaded):
        return list(loaded)
    raise PackagingError(f"example input {path}: expected a tensor or a tuple of tensors")
