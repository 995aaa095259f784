"""Which compiled variant a server may load, and why it refuses one: no compiler, no torch."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from service.runtime.compiled import cpu_features, usable_variant
from service.runtime.manifest import CompiledVariant, Manifest, ModelPrecision

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def _manifest(**variant: Any) -> Manifest:
    fields: dict[str, Any] = {
        "file": "model.fp32.cpu.aoti.pt2",
        "precision": "fp32",
        "cpu_features": cpu_features(),
        "torch_version": torch.__version__,
        "max_abs_diff": 0.0,
        "agreement": 1.0,
        **variant,
    }
    return Manifest(
        name="m",
        version=1,
        task="tensor",
        sha256="0" * 64,
        inputs=[],
        outputs=[],
        compiled=[CompiledVariant(**fields)],
        torch_version=torch.__version__,
        created_at="2026-12-06T00:00:00+00:00",
    )


def test_a_matching_vouched_variant_is_usable() -> None:
    variant, why = usable_variant(_manifest(), "fp32", CPU, may_run_code=True)
    assert variant is not None and variant.file == "model.fp32.cpu.aoti.pt2", why


@pytest.mark.parametrize(
    ("variant", "precision", "device", "may_run_code", "reason"),
    [
        ({}, "bf16", CPU, True, "no compiled variant for bf16"),
        ({}, "fp32", torch.device("cuda"), True, "serving on cuda"),
        ({}, "fp32", CPU, False, "nothing vouches for this version"),
        ({"torch_version": "2.0.0"}, "fp32", CPU, True, "built with torch 2.0.0"),
        # The host's own features (whatever this machine has) and one that no x86 CPU has.
        (
            {"cpu_features": [*cpu_features(), "sve2048"]},
            "fp32",
            CPU,
            True,
            "this CPU lacks sve2048, which",
        ),
    ],
)
def test_an_unusable_variant_is_refused_with_its_reason(
    variant: dict[str, Any],
    precision: ModelPrecision,
    device: torch.device,
    may_run_code: bool,
    reason: str,
) -> None:
    chosen, why = usable_variant(_manifest(**variant), precision, device, may_run_code=may_run_code)
    assert chosen is None
    assert reason in why


def test_a_manifest_without_variants_reads_as_before() -> None:
    manifest = _manifest()
    raw = manifest.model_dump(exclude={"compiled"})
    assert Manifest.model_validate(raw).compiled == []
