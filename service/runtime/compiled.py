"""RUNTIME: whether a version runs eagerly or as its compiled (AOTInductor) variant.

A compiled variant is a shared library built for one CPU feature set and one torch release.
Where it cannot run, or cannot be trusted, the version runs eagerly and the reason is logged;
an unusable variant never stops a version from loading.
"""

from __future__ import annotations

import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from service.runtime.manifest import CompiledVariant, Manifest, ModelPrecision

logger = logging.getLogger(__name__)

Runtime = Literal["eager", "compiled", "onnx"]
# Forwards of the full warm-up batch timed per runtime when RUNTIME=auto compares the two.
_TIMED_FORWARDS = 5


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Runtime
    reason: str


def cpu_features() -> list[str]:
    """The features that inductor's generated CPU kernels may be built for, that this CPU has.

    The same function names them at packaging and checks them at serving. It reads what the
    CPU reports (no compiler is needed where the server runs)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    checks: dict[str, Callable[[], bool]] = {
        "avx2": torch.cpu._is_avx2_supported,
        "avx512": torch.cpu._is_avx512_supported,
        "avx512_vnni": lambda: torch.cpu._is_avx512_supported() and torch.cpu._is_vnni_supported(),
        "avx512_bf16": torch.cpu._is_avx512_bf16_supported,
        "amx_tile": torch.cpu._is_amx_tile_supported,
    }
    return [name for name, supported in checks.items() if supported()]


def usable_variant(
    manifest: Manifest,
    precision: ModelPrecision,
    device: torch.device,
    *,
    may_run_code: bool,
) -> tuple[CompiledVariant | None, str]:
    """The compiled variant this server may load for `precision`, or None and why not."""
    variant = next((v for v in manifest.compiled if v.precision == precision), None)
    if variant is None:
        return None, f"no compiled variant for {precision}"
    if device.type != variant.device:
        return None, f"the compiled variant is for {variant.device}, serving on {device.type}"
    if not may_run_code:
        return None, (
            "the compiled variant is native code, and nothing vouches for this version"
            " (MODEL_TRUST=none, ALLOW_PICKLED_ARTIFACTS=false)"
        )
    if variant.torch_version != torch.__version__:
        return None, (
            f"the compiled variant was built with torch {variant.torch_version},"
            f" this server runs {torch.__version__}"
        )
    missing = sorted(set(variant.cpu_features) - set(cpu_features()))
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}, which the compiled variant needs"
    return variant, "usable"


def load_compiled(path: Path) -> Callable[..., Any]:
    """Load a compiled package. Call only on the torch thread."""
    from torch._inductor import aoti_load_package

    return aoti_load_package(str(path))


def median_seconds(forward: Callable[[], object]) -> float:
    times = []
    for _ in range(_TIMED_FORWARDS):
        began = time.perf_counter()
        forward()
        times.append(time.perf_counter() - began)
    return statistics.median(times)
