"""`--onnx`: the exported artifact as an ONNX graph (fp32), for ONNX Runtime on a CPU.

The graph is written from the torch.export artifact itself, so its dynamic dimensions are the
artifact's. Before it is written into the version it runs under ONNX Runtime against the eager
artifact: outputs within the compiled variants' fp32 tolerance, and its agreement with fp32
recorded as theirs is.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import torch

from service.packaging import agreement as agreements
from service.packaging.compile import FP32_TOLERANCE
from service.packaging.errors import PackagingError
from service.runtime.errors import first_line
from service.runtime.manifest import OnnxVariant
from service.runtime.onnx_session import OnnxModule

logger = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor, ...]
ONNX_FILE = "model.fp32.onnx"
# Opset 23 turns scaled_dot_product_attention into one Attention node, and ONNX Runtime 1.32's
# CPU kernel refuses a mask broadcast over the query positions (a BERT's (batch, 1, 1, seq)).
# At 18 the exporter writes the attention out in MatMul and Softmax, which every runtime runs.
OPSET = 18


def export_onnx(
    artifact: Path,
    example: Tensors,
    reference: Tensors,
    agreement: agreements.Agreement,
) -> OnnxVariant:
    """Export `artifact` to ONNX beside it and check it under ONNX Runtime against
    `reference`, the fp32 artifact's outputs for `example`."""
    began = time.monotonic()
    target = artifact.with_name(ONNX_FILE)
    # It warns, per export, that torchvision's operators cannot be exported without torchvision.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    try:
        program = torch.export.load(str(artifact))
        with warnings.catch_warnings():
            # The exporter's own dependencies use APIs torch deprecates: nothing to act on here.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            exported = torch.onnx.export(
                program, dynamo=True, opset_version=OPSET, optimize=True, verbose=False
            )
        if exported is None:
            raise PackagingError("the ONNX exporter returned no program")
        exported.save(str(target), external_data=False)
        module = OnnxModule(target, threads=torch.get_num_threads())
    except ImportError as e:
        raise PackagingError(
            f"--onnx needs onnxscript and onnxruntime (pip install 'torchdock[build,onnx]'): {e}"
        ) from e
    except PackagingError:
        raise
    except Exception as e:  # the exporter and ONNX Runtime raise many types
        raise PackagingError(f"the artifact does not export to ONNX: {first_line(e)}") from e
    if module.input_count != len(example):
        raise PackagingError(
            f"the ONNX graph takes {module.input_count} inputs where the artifact takes"
            f" {len(example)} (an input the model ignores is dropped by the exporter)"
        )
    outputs = agreements.float_outputs(module(*example))
    difference = agreements.max_abs_diff(reference, outputs)
    if difference > FP32_TOLERANCE:
        raise PackagingError(
            f"the ONNX variant's outputs differ from the artifact's by {difference:.3g}"
        )
    variant = OnnxVariant(
        file=target.name,
        opset=OPSET,
        exported_by=torch.__version__,
        max_abs_diff=round(difference, 6),
        agreement=round(agreement.measure(reference, outputs), 6),
    )
    logger.info(
        "ONNX variant",
        extra={
            "seconds": round(time.monotonic() - began, 1),
            "max_abs_diff": variant.max_abs_diff,
            "agreement": variant.agreement,
        },
    )
    return variant
