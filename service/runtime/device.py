"""Device and precision: refuse impossible combinations at startup, pick fast defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from service.runtime.errors import DeviceError
from service.runtime.manifest import ModelPrecision, PrecisionPolicy

logger = logging.getLogger(__name__)

DTYPES: dict[ModelPrecision, torch.dtype] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
# CPU flags that make bf16 matrix work faster than fp32 (oneDNN uses them).
_CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_device(requested: str) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        logger.info("DEVICE=auto found no CUDA device; serving on CPU")
        return torch.device("cpu")
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"DEVICE={requested} but no CUDA device is visible to this process")
        device = torch.device(requested)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"DEVICE={requested} but only {torch.cuda.device_count()}"
                " CUDA device(s) are visible"
            )
        return device
    return torch.device("cpu")


@lru_cache(maxsize=1)
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU features (from /proc/cpuinfo) that accelerate bf16; empty where none or unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return tuple(f for f in _CPU_BF16_FLAGS if f in flags)


def supported_precisions(device: torch.device) -> tuple[ModelPrecision, ...]:
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return ("fp32", "fp16", "bf16")
        return ("fp32", "fp16")
    # fp16 matmuls on CPU are emulated and slow, and some ops lack fp16 CPU kernels.
    return ("fp32", "bf16")


def fast_precisions(device: torch.device) -> tuple[ModelPrecision, ...]:
    """Reduced precisions that are faster than fp32 on this hardware, fastest first."""
    if device.type == "cuda":
        return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    return ("bf16",) if cpu_bf16_flags() else ()


@dataclass(frozen=True)
class PrecisionChoice:
    precision: ModelPrecision
    reason: str


def choose_precision(
    requested: str, policy: PrecisionPolicy, device: torch.device, *, model: str
) -> PrecisionChoice:
    supported = supported_precisions(device)
    if requested != "auto":
        if requested not in supported:
            raise DeviceError(
                f"PRECISION={requested} is not supported for model {model!r} on {device.type}"
                f" (supported: {', '.join(supported)})"
            )
        return PrecisionChoice(requested, "configured")
    for candidate in fast_precisions(device):
        agreement = policy.measured_agreement.get(candidate)
        if agreement is not None and agreement >= policy.min_agreement:
            return PrecisionChoice(
                candidate,
                f"fastest on {device.type} meeting the model's bound"
                f" ({policy.agreement_metric} {agreement:.5f} >= {policy.min_agreement})",
            )
    if policy.default in supported:
        return PrecisionChoice(policy.default, "the model's default")
    return PrecisionChoice("fp32", f"the model's default {policy.default} is not supported here")


def configure_torch_threads(threads: int) -> None:
    """Must run on the thread that will call torch: OpenMP's thread count is per calling thread."""
    torch.set_num_threads(threads)
