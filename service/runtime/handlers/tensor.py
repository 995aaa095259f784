"""The model's own tensors in and out, batched along dimension 0 (as Triton's PyTorch backend).

Inputs and outputs are named and typed by the manifest. An item is one instance: a tuple of
arrays in the manifest's input order, without the batch dimension. Instances whose other
dimensions differ cannot share a forward pass, so a batch runs as one pass per shape.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.runtime.dtypes import numeric_array, numpy_dtype
from service.runtime.errors import InvalidInput, ModelLoadError
from service.runtime.handlers.base import ModelHandler, Prepared
from service.runtime.manifest import Manifest, TensorSpec

Instance = tuple[np.ndarray, ...]
Prediction = tuple[np.ndarray, ...]
_NDIM = struct.Struct("<B")
_DIM = struct.Struct("<q")


class TensorHandler(ModelHandler[Instance, Prediction]):
    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        for spec in (*manifest.inputs, *manifest.outputs):
            if spec.datatype == "BYTES" or not spec.shape or spec.shape[0] != -1:
                raise ModelLoadError(
                    f"tensor {spec.name!r}: the tensor task takes numeric tensors whose first"
                    " dimension is the batch (-1)"
                )
        self.inputs = manifest.inputs
        self.outputs = manifest.outputs
        self._dtypes = [numpy_dtype(spec.datatype) for spec in self.outputs]
        examples = manifest.preprocessing.get("example_shapes", {})
        self._warmup = tuple(
            np.zeros(
                examples.get(spec.name, [max(d, 1) for d in spec.shape[1:]]),
                dtype=numpy_dtype(spec.datatype),
            )
            for spec in self.inputs
        )

    # Decoding (event loop) ----------------------------------------------------------------

    def instances_from_json(self, instances: Sequence[Any]) -> list[Instance]:
        return [self._instance(i, instance) for i, instance in enumerate(instances)]

    def _instance(self, index: int, instance: Any) -> Instance:
        if not isinstance(instance, dict):
            if len(self.inputs) != 1:
                raise InvalidInput(
                    f"instance {index}: this model takes {len(self.inputs)} inputs; send"
                    f" an object with {[s.name for s in self.inputs]}"
                )
            instance = {self.inputs[0].name: instance}
        names = [spec.name for spec in self.inputs]
        if set(instance) != set(names):
            raise InvalidInput(f"instance {index}: expected exactly the inputs {names}")
        return tuple(
            self._array(instance[spec.name], spec, where=f"instance {index} input {spec.name!r}")
            for spec in self.inputs
        )

    @staticmethod
    def _array(value: Any, spec: TensorSpec, *, where: str) -> np.ndarray:
        array = numeric_array(value, spec.datatype, where=where)
        if not _fits(array.shape, spec.shape[1:]):
            raise InvalidInput(f"{where}: shape {list(array.shape)} does not fit {spec.shape[1:]}")
        return array

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[Instance]:
        arrays = [tensors[spec.name] for spec in self.inputs]
        return [tuple(a[i] for a in arrays) for i in range(arrays[0].shape[0])]

    # Encoding (event loop) ----------------------------------------------------------------

    def predictions_to_json(self, predictions: Sequence[Prediction]) -> list[Any]:
        if len(self.outputs) == 1:
            return [p[0] for p in predictions]
        names = [spec.name for spec in self.outputs]
        return [dict(zip(names, p, strict=True)) for p in predictions]

    def predictions_to_tensors(self, predictions: Sequence[Prediction]) -> dict[str, np.ndarray]:
        stacked = {}
        for position, spec in enumerate(self.outputs):
            parts = [p[position] for p in predictions]
            if len({part.shape for part in parts}) > 1:
                raise InvalidInput(
                    f"output {spec.name!r} differs in shape between instances; send them apart"
                )
            stacked[spec.name] = np.stack(parts)
        return stacked

    # The cache's keys and values ------------------------------------------------------------

    def instance_key(self, item: Instance) -> bytes:
        return _pack(item)

    def encode_prediction(self, prediction: Prediction) -> bytes:
        return _pack(prediction)

    def decode_prediction(self, data: bytes) -> Prediction:
        arrays, offset = [], 0
        try:
            for dtype in self._dtypes:
                (ndim,) = _NDIM.unpack_from(data, offset)
                offset += _NDIM.size
                shape = [_DIM.unpack_from(data, offset + k * _DIM.size)[0] for k in range(ndim)]
                offset += ndim * _DIM.size
                count = int(np.prod(shape, dtype=np.int64))
                if min(shape, default=0) < 0:
                    raise ValueError("negative dimension")
                arrays.append(
                    np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
                )
                offset += count * dtype.itemsize
        except struct.error as e:
            raise ValueError(f"not an encoded prediction: {e}") from None
        if offset != len(data):
            raise ValueError("not an encoded prediction: trailing bytes")
        return tuple(arrays)

    # Around the forward pass (torch thread) -----------------------------------------------

    def preprocess(self, items: list[Instance]) -> Prepared:
        columns = zip(*items, strict=True)
        return Prepared(tuple(torch.from_numpy(np.stack(column)) for column in columns))

    def preprocess_in_passes(self, items: list[Instance]) -> list[tuple[list[int], Prepared]]:
        by_shape: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for position, item in enumerate(items):
            by_shape.setdefault(tuple(a.shape for a in item), []).append(position)
        return [
            (positions, self.preprocess([items[p] for p in positions]))
            for positions in by_shape.values()
        ]

    def postprocess(self, outputs: Any, prepared: Prepared) -> list[Prediction]:
        tensors = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        if len(tensors) != len(self.outputs):
            raise ModelLoadError(
                f"the model returned {len(tensors)} outputs; the manifest names {len(self.outputs)}"
            )
        arrays = [
            _numpy(t).astype(dtype, copy=False)
            for t, dtype in zip(tensors, self._dtypes, strict=True)
        ]
        return [tuple(a[i] for a in arrays) for i in range(arrays[0].shape[0])]

    def warmup_items(self) -> list[Instance]:
        return [self._warmup]


def _fits(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(w in (-1, g) for w, g in zip(spec, shape, strict=True))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    # numpy has no bfloat16; every other dtype converts as it is.
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def _pack(arrays: Sequence[np.ndarray]) -> bytes:
    parts = []
    for array in arrays:
        parts.append(_NDIM.pack(array.ndim))
        parts.extend(_DIM.pack(d) for d in array.shape)
        parts.append(np.ascontiguousarray(array).tobytes())
    return b"".join(parts)
