"""Loading one model version: its artifact onto a device, its warm-up, and the runtime that
serves it (eager, compiled or ONNX)."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from service.config import RuntimeSetting
from service.observability import metrics
from service.runtime.compiled import (
    Runtime,
    RuntimeChoice,
    load_compiled,
    median_seconds,
    usable_variant,
)
from service.runtime.device import DTYPES, PrecisionChoice
from service.runtime.errors import ModelLoadError, first_line
from service.runtime.executor import TorchThread
from service.runtime.handlers import handler_for
from service.runtime.manifest import Manifest
from service.runtime.model import BatchPolicy, LoadedModel
from service.runtime.onnx_session import OnnxModule, usable_onnx
from service.runtime.shared_choice import SharedChoice

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
    shared_choice: SharedChoice | None = None,
) -> LoadedModel:
    """Load and warm up one version. Call only on the torch thread. With `shared_choice`,
    RUNTIME=auto is decided once for all of the server's workers (`runtime.shared_choice`)."""
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
        choose = functools.partial(
            _choose_runtime,
            model,
            artifact.parent,
            runtime,
            may_run_code=may_run_code,
            warm=warm,
            sizes=sizes,
        )
        if runtime == "auto" and shared_choice is not None:
            full_batch = _choose_once_per_server(model, shared_choice, choose) or full_batch
        else:
            full_batch = choose() or full_batch
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


def _choose_once_per_server(
    model: LoadedModel, shared: SharedChoice, choose: Callable[..., float | None]
) -> float | None:
    """The runtime a sibling worker chose for this version, or, for the first worker, the one
    `choose` times, recorded for the others. The seconds of a full batch, as `choose`'s."""
    with shared.choices.decide(shared.key) as recorded:
        if recorded is None:
            seconds = choose()
            shared.choices.record(shared.key, model.runtime)
            return seconds
        if recorded.runtime == "eager":
            model.runtime = RuntimeChoice("eager", f"{recorded.reason}, timed by a sibling worker")
            return None
        return choose(only=recorded)


def _choose_runtime(
    model: LoadedModel,
    directory: Path,
    setting: RuntimeSetting,
    *,
    may_run_code: bool,
    warm: list[Any],
    sizes: list[int],
    only: RuntimeChoice | None = None,
) -> float | None:
    """Serve a variant (compiled, ONNX) where one is usable and, for RUNTIME=auto, the fastest
    here, eager included; `only` that one where a sibling worker chose it.

    The seconds of a full batch with the runtime chosen, or None to keep the eager figure."""
    candidates, refusals = _candidates(model, directory, setting, may_run_code=may_run_code)
    if only is not None:
        candidates = {r: load for r, load in candidates.items() if r == only.runtime}
    eager, eager_choice = model.module, model.runtime
    full = (warm * sizes[-1])[: sizes[-1]]
    fastest: tuple[Runtime, Callable[..., Any], float] | None = None
    timings: dict[str, float] = {}
    for runtime, load in candidates.items():
        try:
            module = load()
        except Exception as e:  # torch and ONNX Runtime raise many types for a bad file
            refusals.append(_unusable(model, f"the {runtime} variant failed to load", e))
            continue
        try:
            model.use(module, RuntimeChoice(runtime, f"RUNTIME={setting}"))
            _warm_up(model, warm, sizes)
            timings[runtime] = median_seconds(lambda: model.forward(full))
        except Exception as e:  # nor for one that loads and then fails
            refusals.append(_unusable(model, f"the {runtime} variant failed its warm-up", e))
            continue
        finally:
            model.use(eager, eager_choice)
        if fastest is None or timings[runtime] < fastest[2]:
            fastest = (runtime, module, timings[runtime])
    if fastest is None:
        _eager_after_all(model, setting, "; ".join(refusals))
        return None
    if only is not None:
        reason = f"{only.reason}, timed by a sibling worker"
        model.use(fastest[1], RuntimeChoice(fastest[0], reason))
        return fastest[2]
    if setting != "auto":
        model.use(fastest[1], RuntimeChoice(fastest[0], f"RUNTIME={setting}"))
        return fastest[2]
    timings["eager"] = median_seconds(lambda: model.forward(full))
    measured = ", ".join(f"{name} {seconds * 1e3:.1f} ms" for name, seconds in timings.items())
    measured = f"a batch of {len(full)}: {measured}"
    if fastest[2] < timings["eager"]:
        choice = RuntimeChoice(fastest[0], f"RUNTIME=auto, the fastest here ({measured})")
        model.use(fastest[1], choice)
        return fastest[2]
    model.runtime = RuntimeChoice("eager", f"RUNTIME=auto, no variant faster here ({measured})")
    return timings["eager"]


def _candidates(
    model: LoadedModel, directory: Path, setting: RuntimeSetting, *, may_run_code: bool
) -> tuple[dict[Runtime, Callable[[], Callable[..., Any]]], list[str]]:
    """A loader for each variant the setting asks for and this server may serve; why not, for
    the others."""
    wanted = ("compiled", "onnx") if setting == "auto" else (setting,)
    precision = model.precision.precision
    loaders: dict[Runtime, Callable[[], Callable[..., Any]]] = {}
    refusals: list[str] = []
    if "compiled" in wanted:
        compiled, why = usable_variant(
            model.manifest, precision, model.device, may_run_code=may_run_code
        )
        if compiled is None:
            refusals.append(why)
        else:
            loaders["compiled"] = lambda: load_compiled(directory / compiled.file)
    if "onnx" in wanted:
        onnx, why = usable_onnx(model.manifest, precision, model.device)
        if onnx is None:
            refusals.append(why)
        else:
            threads = torch.get_num_threads()
            loaders["onnx"] = lambda: OnnxModule(directory / onnx.file, threads=threads)
    return loaders, refusals


def _unusable(model: LoadedModel, what: str, e: Exception) -> str:
    """Log a variant that cannot serve (it falls back; it never fails the version); why."""
    why = f"{what}: {first_line(e)}"
    logger.warning(
        "variant unusable",
        extra={"model_name": model.name, "model_version": model.version, "reason": why},
    )
    return why


def _eager_after_all(model: LoadedModel, setting: RuntimeSetting, why: str) -> None:
    model.runtime = RuntimeChoice("eager", why)
    if setting != "auto":  # for auto, no variant to serve is the common case, not a fault
        logger.warning(
            f"RUNTIME={setting}, serving eagerly",
            extra={"model_name": model.name, "model_version": model.version, "reason": why},
        )
