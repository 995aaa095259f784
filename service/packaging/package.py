"""`torchdock package`: one complete, verified model version from a module, an archive or a script.

Every source ends in the same steps: the artifact is written to a staging directory, checked
for payloads that could run code, loaded back with the server's own loader, run on the example
input and compared with the reference, measured in the reduced precisions, and only then given
its manifest and moved into place. The bundled models are built through this path too.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from service.packaging import agreement as agreements
from service.packaging.agreement import max_abs_diff
from service.packaging.compile import compile_variants
from service.packaging.errors import PackagingError
from service.packaging.onnx_export import export_onnx
from service.packaging.specs import as_tuple, exported_specs, named_specs, renamed
from service.packaging.writer import copy_files, next_version, staged_version, write_manifest
from service.runtime.artifact_safety import check_artifact
from service.runtime.device import DTYPES, PrecisionChoice
from service.runtime.errors import ModelLoadError, first_line
from service.runtime.handlers import handler_for
from service.runtime.loading import load_module, load_torchscript
from service.runtime.manifest import (
    ArtifactFormat,
    CompiledVariant,
    Manifest,
    ModelPrecision,
    OnnxVariant,
    TensorSpec,
)
from service.runtime.model import to_host
from service.runtime.trust import sign_version

logger = logging.getLogger(__name__)

MAX_BATCH = 4096
# Exported graphs compute what eager does, op for op; more than this is a wrong graph.
EXPORT_TOLERANCE = 1e-4
Tensors = tuple[torch.Tensor, ...]


@dataclass
class PackageRequest:
    output: Path
    name: str
    task: str = "tensor"
    version: int | None = None
    handler: str | None = None
    force: bool = False
    max_batch_size: int = 32
    max_batch_delay_ms: float | None = None
    input_names: list[str] | None = None
    output_names: list[str] | None = None
    # The client-facing specs, when the handler's differ from the model's own tensors.
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    extra_files: dict[str, Path] = field(default_factory=dict)
    agreement: agreements.Agreement = agreements.MIN_COSINE
    min_agreement: float = 0.999
    # Inputs on which reduced precisions are measured; the example input when unset.
    calibration: Tensors | None = None
    precisions: tuple[ModelPrecision, ...] = ("bf16", "fp16")
    # Precisions to compile a CPU variant for (AOTInductor); torch.export artifacts only.
    compile: tuple[ModelPrecision, ...] = ()
    # Also an fp32 ONNX variant, for ONNX Runtime (torch.export artifacts only).
    onnx: bool = False
    # An Ed25519 private key: the manifest is signed before the version is moved into place.
    signing_key: Path | None = None


def package_module(
    module: torch.nn.Module,
    example: Tensors,
    request: PackageRequest,
    *,
    dynamic_batch: bool = True,
    dynamic_shapes: Any = None,
) -> Manifest:
    """torch.export `module`, its first dimension dynamic unless `dynamic_shapes` says more."""
    module.eval()
    if dynamic_batch and dynamic_shapes is None:
        # torch.export specialises a dimension of size 1: export on a batch of two.
        example = tuple(_at_least_two(t) for t in example)
        batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in example)
    reference = _run(module, example, what="the module")
    try:
        with torch.no_grad():
            program = torch.export.export(
                module, example, dynamic_shapes=dynamic_shapes, strict=False
            )
    except Exception as e:  # export raises many types, each with a long explanation
        raise PackagingError(
            f"the module does not export with torch.export: {first_line(e)}"
        ) from e
    inputs, outputs = exported_specs(program)
    inputs = renamed(inputs, request.input_names, kind="input")
    outputs = renamed(outputs, request.output_names, kind="output")
    return _package(
        request,
        "torch.export",
        lambda path: torch.export.save(program, str(path)),
        example,
        reference,
        inputs,
        outputs,
        check_batches=dynamic_batch,
    )


def package_exported(archive: Path, request: PackageRequest, example: Tensors | None) -> Manifest:
    """An existing torch.export archive, as it is; its own sample inputs when none are given."""
    program = _load_source(archive, "torch.export")
    if example is None:
        args, kwargs = program.example_inputs or ((), {})
        if kwargs or not args:
            raise PackagingError(f"{archive.name} has no sample inputs; give --example-input")
        example = tuple(args)
    reference = _run(program.module(), example, what=archive.name)
    inputs, outputs = exported_specs(program)
    inputs = renamed(inputs, request.input_names, kind="input")
    outputs = renamed(outputs, request.output_names, kind="output")
    return _package(
        request,
        "torch.export",
        lambda path: shutil.copyfile(archive, path),
        example,
        reference,
        inputs,
        outputs,
        check_batches=all(spec.shape[0] == -1 for spec in inputs),
    )


def package_torchscript(script: Path, request: PackageRequest, example: Tensors) -> Manifest:
    """A TorchScript file, checked by running the example input; the batch taken as dynamic."""
    module = _load_source(script, "torchscript")
    reference = _run(module, example, what=script.name)
    inputs = named_specs(example, request.input_names, kind="input")
    outputs = named_specs(reference, request.output_names, kind="output")
    return _package(
        request,
        "torchscript",
        lambda path: shutil.copyfile(script, path),
        example,
        reference,
        inputs,
        outputs,
        check_batches=True,
    )


def _load_source(path: Path, artifact_format: ArtifactFormat) -> Any:
    if not path.is_file():
        raise PackagingError(f"{path} is missing")
    try:
        check_artifact(path, artifact_format, allow_code=False)
        if artifact_format == "torchscript":
            return load_torchscript(path, torch.device("cpu"))
        return torch.export.load(str(path))
    except ModelLoadError as e:
        raise PackagingError(str(e)) from e
    except Exception as e:  # torch raises many types for a file it cannot read
        raise PackagingError(f"{path.name}: not a {artifact_format} file: {first_line(e)}") from e


def _package(
    request: PackageRequest,
    artifact_format: ArtifactFormat,
    save: Callable[[Path], object],
    example: Tensors,
    reference: Tensors,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    *,
    check_batches: bool,
) -> Manifest:
    version = request.version or next_version(request.output, request.name)
    artifact = "model.pt2" if artifact_format == "torch.export" else "model.pt"
    with staged_version(request.output, request.name, version, force=request.force) as staging:
        save(staging / artifact)
        copy_files(staging, request.extra_files)
        try:
            # What the server would refuse is not worth writing.
            check_artifact(staging / artifact, artifact_format, allow_code=False)
            served = load_module(
                staging / artifact,
                artifact_format,
                torch.device("cpu"),
                PrecisionChoice("fp32", "packaging"),
            )
        except ModelLoadError as e:
            raise PackagingError(str(e)) from e
        served_outputs = _run(served, example, what="the packaged artifact")
        difference = max_abs_diff(reference, served_outputs)
        if difference > EXPORT_TOLERANCE:
            raise PackagingError(
                f"the packaged artifact's outputs differ from the reference by {difference:.3g}"
            )
        if check_batches:
            _check_batch_sizes(served, example, served_outputs)
        calibration = request.calibration or example
        calibrated = _run(served, calibration, what="the calibration input")
        measured = _measure_precisions(
            served, calibration, calibrated, request.agreement, request.precisions
        )
        compiled, onnx = _variants(
            request, artifact_format, staging / artifact, calibration, calibrated
        )
        fields = _manifest_fields(request, version, inputs, outputs, measured, difference)
        fields["format"] = artifact_format
        fields["compiled"] = [v.model_dump() for v in compiled]
        fields["onnx"] = onnx.model_dump() if onnx else None
        variants = [*(v.file for v in compiled), *([onnx.file] if onnx else [])]
        manifest = write_manifest(
            staging,
            fields=fields,
            artifact=artifact,
            files=sorted([*request.extra_files, *variants]),
        )
        _check_handler(manifest, staging, served)
        if request.signing_key is not None:
            _sign(staging, request.signing_key)
    logger.info(
        "packaged model",
        extra={
            "model_name": manifest.name,
            "model_version": manifest.version,
            "max_abs_diff": difference,
            "agreement": measured,
        },
    )
    return manifest


def _variants(
    request: PackageRequest,
    artifact_format: ArtifactFormat,
    artifact: Path,
    calibration: Tensors,
    reference: Tensors,
) -> tuple[list[CompiledVariant], OnnxVariant | None]:
    """The compiled and ONNX variants asked for, each checked against `reference`, the fp32
    artifact's outputs on the calibration input."""
    if not request.compile and not request.onnx:
        return [], None
    if artifact_format != "torch.export":
        option = "--compile" if request.compile else "--onnx"
        raise PackagingError(f"{option} takes torch.export artifacts only, not TorchScript")
    compiled = compile_variants(
        artifact, request.compile, calibration, reference, request.agreement
    )
    if not request.onnx:
        return compiled, None
    return compiled, export_onnx(artifact, calibration, reference, request.agreement)


def _manifest_fields(
    request: PackageRequest,
    version: int,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    measured: dict[ModelPrecision, float],
    difference: float,
) -> dict[str, Any]:
    return {
        "name": request.name,
        "version": version,
        "task": request.task,
        "handler": request.handler,
        "inputs": [s.model_dump() for s in request.inputs or inputs],
        "outputs": [s.model_dump() for s in request.outputs or outputs],
        "labels": request.labels,
        "preprocessing": request.preprocessing,
        "max_batch_size": request.max_batch_size,
        "max_batch_delay_ms": request.max_batch_delay_ms,
        "precision": {
            "default": "fp32",
            "measured_agreement": measured,
            "min_agreement": request.min_agreement,
            "agreement_metric": request.agreement.metric,
        },
        "metrics": {**request.metrics, "packaging_max_abs_diff": difference},
        "source": request.source,
    }


def _sign(staging: Path, key: Path) -> None:
    try:
        sign_version(staging, key)
    except (OSError, ValueError) as e:
        raise PackagingError(f"--sign-key {key}: {e}") from e


def _check_handler(manifest: Manifest, staging: Path, module: torch.nn.Module) -> None:
    """The handler the server will use accepts the manifest and runs its own warm-up."""
    try:
        handler = handler_for(manifest, staging)
        items = handler.warmup_items()
        with torch.inference_mode():
            for _, prepared in handler.preprocess_in_passes(items):
                handler.postprocess(to_host(module(*prepared.inputs)), prepared)
    except Exception as e:  # a user's handler may raise anything
        raise PackagingError(
            f"handler {manifest.handler or manifest.task!r} cannot serve this model:"
            f" {first_line(e)}"
        ) from e


def _check_batch_sizes(module: torch.nn.Module, example: Tensors, outputs: Tensors) -> None:
    """The batch dimension is really dynamic: one row and three rows give matching rows."""
    for size in (1, 3):
        rows = tuple(torch.cat([t] * 3)[:size] for t in example)
        got = _run(module, rows, what=f"the packaged artifact at batch size {size}")
        want = tuple(torch.cat([o] * 3)[:size] for o in outputs)
        if any(g.shape != w.shape for g, w in zip(got, want, strict=True)):
            raise PackagingError(
                f"the packaged artifact does not take a batch of {size} (--no-dynamic-batch"
                " for a model with a fixed batch size)"
            )


def _measure_precisions(
    module: torch.nn.Module,
    inputs: Tensors,
    reference: Tensors,
    agreement: agreements.Agreement,
    precisions: Sequence[ModelPrecision],
) -> dict[ModelPrecision, float]:
    """Each reduced precision's agreement with fp32 (`reference`, the module's outputs for
    `inputs`), where the CPU can run it at all."""
    # Casting back to fp32 would leave the weights rounded to the reduced dtype.
    fp32_state = {name: t.detach().clone() for name, t in module.state_dict().items()}
    measured: dict[ModelPrecision, float] = {}
    for precision in precisions:
        dtype = DTYPES[precision]
        cast = tuple(t.to(dtype) if t.is_floating_point() else t for t in inputs)
        try:
            with torch.inference_mode():
                reduced = as_tuple(module.to(dtype)(*cast))
        except Exception as e:  # an op without a kernel in this dtype
            logger.info(
                "precision not measurable", extra={"precision": precision, "error": first_line(e)}
            )
            continue
        finally:
            module.to(torch.float32).load_state_dict(fp32_state)
        measured[precision] = round(agreement.measure(reference, _host(reduced)), 6)
    return measured


def _run(module: Any, inputs: Tensors, *, what: str) -> Tensors:
    try:
        with torch.inference_mode():
            return _host(as_tuple(module(*inputs)))
    except Exception as e:  # the model's own error, whatever its type
        raise PackagingError(f"the example input does not fit {what}: {first_line(e)}") from e


def _host(outputs: Any) -> Tensors:
    tensors = as_tuple(outputs)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            raise PackagingError(f"the model returned a {type(t).__name__}, not tensors")
    return tuple(t.detach().cpu() for t in tensors)


def _at_least_two(tensor: torch.Tensor) -> torch.Tensor:
    return torch.cat([tensor, tensor]) if tensor.dim() and tensor.shape[0] == 1 else tensor
