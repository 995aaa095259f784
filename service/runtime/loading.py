"""Loading one model version: its artifact onto a device, its warm-up, eager or compiled."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from service.config import RuntimeSetting
from service.observability import metrics
from service.runtime.compiled import RuntimeChoice, load_compiled, median_seconds, usable_variant
from service.runtime.device import DTYPES, PrecisionChoice
from service.runtime.errors import ModelLoadError
from service.runtime.executor import TorchThread
from service.runtime.handlers import handler_for
from service.runtime.manifest import Manifest
from service.runtime.model import BatchPolicy, LoadedModel

logger = logging.getLogger(__name__)


def load_torchscript(path: Path, device: torch.device) -> torch.jit.ScriptModule:
    """A TorchScript file. torch 2.13 deprecates the format; serving what users already have
    is the point of accepting it, so the deprecation is said once in the docs, not per load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        module: torch.jit.ScriptModule = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=device
        )
    return module.eval()


def load_module(
    artifact: Path, artifact_format: str, device: torch.device, precision: PrecisionChoice
) -> torch.nn.Module:
    """Load an artifact onto a device in a precision. Call only on the torch thread."""
    module: torch.nn.Module
    try:
        if artifact_format == "torchscript":
            module = load_torchscript(artifact, device)
        else:
            program = torch.export.load(str(artifact))
            if device.type != "cpu":
                from torch.export.passes import move_to_device_pass

                program = move_to_device_pass(program, device)
            module = program.module()
    except Exception as e:  # torch raises many types for a corrupt archive
        raise ModelLoadError(
            f"{artifact.name}: not a loadable {artifact_format} archive: {e}"
        ) from e
    return module.to(dtype=DTYPES[precision.precision])


def load_model(
    *,
    manifest: Manifest,
    artifact: Path,
    device: torch.device,
    precision: PrecisionChoice,
    torch_thread: TorchThread,
    policy: BatchPolicy,
    runtime: RuntimeSetting = "eager",
    may_run_code: bool = False,
) -> LoadedModel:
    """Load and warm up one version. Call only on the torch thread."""
    started = time.monotonic()
    handler = handler_for(manifest, artifact.parent)
    handler.place(device)
    module = load_module(artifact, manifest.format, device, precision)
    model = LoadedModel(
        manifest=manifest,
        handler=handler,
        module=module,
        device=device,
        precision=precision,
        torch_thread=torch_thread,
        policy=policy,
    )
    warm = handler.warmup_items()
    sizes = sorted({1, min(policy.max_batch_size, 8), policy.max_batch_size})
    full_batch = _warm_up(model, warm, sizes)
    if runtime != "eager":
        full_batch = (
            _choose_runtime(
                model, artifact.parent, runtime, may_run_code=may_run_code, warm=warm, sizes=sizes
            )
            or full_batch
        )
    # Admission control starts from the time of a full batch.
    model.batcher.calibrate(full_batch)
    elapsed = time.monotonic() - started
    metrics.MODEL_LOAD_SECONDS.labels(manifest.name, str(manifest.version)).set(elapsed)
    logger.info(
        "loaded model",
        extra={
            "model_name": manifest.name,
            "model_version": manifest.version,
            "device": str(device),
            "precision": precision.precision,
            "precision_reason": precision.reason,
            "runtime": model.runtime.runtime,
            "runtime_reason": model.runtime.reason,
            "load_seconds": round(elapsed, 3),
        },
    )
    return model


def _warm_up(model: LoadedModel, warm: list[Any], sizes: list[int]) -> float:
    """Run each batch size once, the full batch last; that last forward's seconds."""
    seconds = 0.0
    for size in sizes:
        began = time.monotonic()
        model.forward((warm * size)[:size])
        seconds = time.monotonic() - began
    return seconds


def _choose_runtime(
    model: LoadedModel,
    directory: Path,
    setting: RuntimeSetting,
    *,
    may_run_code: bool,
    warm: list[Any],
    sizes: list[int],
) -> float | None:
    """Serve the compiled variant where it is usable and (for RUNTIME=auto) faster here.

    The seconds of a full batch with the runtime chosen, or None to keep the eager figure."""
    variant, why = usable_variant(
        model.manifest, model.precision.precision, model.device, may_run_code=may_run_code
    )
    if variant is None:
        model.runtime = RuntimeChoice("eager", why)
        if setting == "compiled":
            logger.warning(
                "RUNTIME=compiled, serving eagerly",
                extra={"model_name": model.name, "model_version": model.version, "reason": why},
            )
        return None
    full = (warm * sizes[-1])[: sizes[-1]]
    try:
        compiled = load_compiled(directory / variant.file)
        eager = model.use(compiled, RuntimeChoice("compiled", f"RUNTIME={setting}"))
    except Exception as e:  # torch raises many types for a library that does not load
        _eager_after_all(model, f"the compiled variant failed to load: {e}")
        return None
    try:
        _warm_up(model, warm, sizes)
        compiled_seconds = median_seconds(lambda: model.forward(full))
    except Exception as e:  # nor for one that loads and then fails
        model.use(eager, model.runtime)
        _eager_after_all(model, f"the compiled variant failed its warm-up: {e}")
        return None
    if setting == "compiled":
        return compiled_seconds
    model.use(eager, model.runtime)
    eager_seconds = median_seconds(lambda: model.forward(full))
    timings = (
        f"a batch of {len(full)}: compiled {compiled_seconds * 1e3:.1f} ms, eager"
        f" {eager_seconds * 1e3:.1f} ms"
    )
    if compiled_seconds < eager_seconds:
        model.use(compiled, RuntimeChoice("compiled", f"RUNTIME=auto, faster here ({timings})"))
        return compiled_seconds
    model.runtime = RuntimeChoice(
        "eager", f"RUNTIME=auto, the compiled variant not faster here ({timings})"
    )
    return eager_seconds


def _eager_after_all(model: LoadedModel, why: str) -> None:
    model.runtime = RuntimeChoice("eager", why)
    logger.warning(
        "compiled variant unusable, serving eagerly",
        extra={"model_name": model.name, "model_version": model.version, "reason": why},
    )
