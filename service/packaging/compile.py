"""`--compile`: the exported artifact compiled ahead of time with AOTInductor, per precision.

The compiled variant is the same graph, cast as the server casts it (`module().to(dtype)`) and
exported again with the artifact's own dynamic dimensions, so that any batch size and sequence
length the artifact takes runs without compiling anything at serving time. It is checked against
the eager artifact before it is written: outputs as close as the precision allows, and its
agreement with fp32 recorded beside the eager one's.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from service.packaging import agreement as agreements
from service.packaging.errors import PackagingError
from service.runtime.compiled import cpu_features, load_compiled
from service.runtime.device import DTYPES
from service.runtime.errors import first_line
from service.runtime.manifest import CompiledVariant, ModelPrecision

logger = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor, ...]
# Compiled kernels fuse and reorder what eager computes op by op; beyond this, in fp32, the
# compiled graph is not the same model.
FP32_TOLERANCE = 1e-3


def compile_variants(
    artifact: Path,
    precisions: tuple[ModelPrecision, ...],
    example: Tensors,
    reference: Tensors,
    agreement: agreements.Agreement,
) -> list[CompiledVariant]:
    """One compiled variant per precision, written beside `artifact`."""
    variants = []
    for precision in precisions:
        began = time.monotonic()
        variant = _compile(artifact, precision, example, reference, agreement)
        variants.append(variant)
        logger.info(
            "compiled variant",
            extra={
                "precision": precision,
                "seconds": round(time.monotonic() - began, 1),
                "max_abs_diff": variant.max_abs_diff,
                "agreement": variant.agreement,
            },
        )
    return variants


def _compile(
    artifact: Path,
    precision: ModelPrecision,
    example: Tensors,
    reference: Tensors,
    agreement: agreements.Agreement,
) -> CompiledVariant:
    from torch._inductor import aoti_compile_and_package

    program = torch.export.load(str(artifact))
    dtype = DTYPES[precision]
    module = program.module().to(dtype)
    inputs = tuple(t.to(dtype) if t.is_floating_point() else t for t in example)
    target = artifact.with_name(f"model.{precision}.cpu.aoti.pt2")
    try:
        with warnings.catch_warnings():
            # Inductor's own modules use APIs torch deprecates (torch.jit.script_method,
            # LeafSpec):
            # nothing a user of this command can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            cast = torch.export.export(module, inputs, dynamic_shapes=_dynamic_shapes(program))
            aoti_compile_and_package(cast, package_path=str(target))
        compiled = load_compiled(target)
        with torch.inference_mode():
            eager_out = agreements.float_outputs(module(*inputs))
            compiled_out = agreements.float_outputs(compiled(*inputs))
    except Exception as e:  # export and inductor raise many types, each with a long story
        raise PackagingError(f"the {precision} artifact does not compile: {first_line(e)}") from e
    difference = agreements.max_abs_diff(eager_out, compiled_out)
    if precision == "fp32" and difference > FP32_TOLERANCE:
        raise PackagingError(
            f"the compiled fp32 variant's outputs differ from the artifact's by {difference:.3g}"
        )
    return CompiledVariant(
        file=target.name,
        precision=precision,
        cpu_features=_built_for(),
        torch_version=torch.__version__,
        max_abs_diff=round(difference, 6),
        agreement=round(agreement.measure(reference, compiled_out), 6),
    )


def _built_for() -> list[str]:
    """The CPU features inductor built the kernels for, in `cpu_features()`'s names: the ones
    a CPU must have to run them."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    isa = pick_vec_isa()
    features = str(isa).split()
    if "-mavx512bf16" in isa.build_arch_flags():
        features.append("avx512_bf16")
    unknown = set(features) - set(cpu_features())
    if unknown:
        raise PackagingError(f"inductor built for {', '.join(sorted(unknown))}, unknown here")
    return features


def _dynamic_shapes(program: torch.export.ExportedProgram) -> tuple[dict[int, Any], ...]:
    """The artifact's own dynamic dimensions, one Dim per symbol, with the same bounds."""
    bounds = {str(symbol): r for symbol, r in program.range_constraints.items()}
    dims: dict[str, Any] = {}
    user_inputs = {
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    }
    shapes = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        dynamic: dict[int, Any] = {}
        for axis, size in enumerate(node.meta["val"].shape):
            if isinstance(size, torch.SymInt):
                name = str(size)
                if name not in dims:
                    r = bounds[name]
                    dims[name] = torch.export.Dim(f"d_{name}", min=int(r.lower), max=int(r.upper))
                dynamic[axis] = dims[name]
        shapes.append(dynamic)
    return tuple(shapes)
