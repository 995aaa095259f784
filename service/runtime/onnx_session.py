"""RUNTIME=onnx: a version's ONNX variant run by ONNX Runtime, called as its module would be.

ONNX Runtime is optional (the `onnx` extra). Where it is missing, or the variant does not fit
the precision and device chosen, the version runs on torch and the reason is logged.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from service.runtime.manifest import Manifest, ModelPrecision, OnnxVariant


def usable_onnx(
    manifest: Manifest, precision: ModelPrecision, device: torch.device
) -> tuple[OnnxVariant | None, str]:
    """The ONNX variant this server may serve, or None and why not."""
    variant = manifest.onnx
    if variant is None:
        return None, "no ONNX variant"
    if device.type != variant.device:
        return None, f"the ONNX variant is for {variant.device}, serving on {device.type}"
    if precision != variant.precision:
        return None, f"the ONNX variant is {variant.precision}, serving {precision}"
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "ONNX Runtime is not installed (the `onnx` extra)"
    return variant, "usable"


class OnnxModule:
    """An ONNX Runtime session that takes and returns torch tensors, like the module it stands
    in for: one output as a tensor, several as a tuple. Call it on the torch thread."""

    def __init__(self, path: Path, *, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        # The torch thread's budget: one worker per core runs one intra-op thread.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads would spin on cores that the event loops and siblings need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # its warnings are about graph rewrites, not the service
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = [i.name for i in self._session.get_inputs()]

    @property
    def input_count(self) -> int:
        return len(self._inputs)

    def __call__(self, *inputs: torch.Tensor) -> Any:
        feed = {name: t.contiguous().numpy() for name, t in zip(self._inputs, inputs, strict=True)}
        outputs = tuple(torch.from_numpy(o) for o in self._session.run(None, feed))
        return outputs[0] if len(outputs) == 1 else outputs
