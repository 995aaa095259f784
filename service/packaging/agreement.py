"""How close outputs stay: a reduced precision to fp32 (what `PRECISION=auto` reads), and the
worst absolute difference between two sets of outputs (what packaging checks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from service.packaging.errors import PackagingError
from service.packaging.specs import as_tuple

Outputs = Sequence[torch.Tensor]


@dataclass(frozen=True)
class Agreement:
    metric: str  # recorded in the manifest as `agreement_metric`
    measure: Callable[[Outputs, Outputs], float]


def _min_cosine(reference: Outputs, reduced: Outputs) -> float:
    """The worst cosine between an instance's fp32 and reduced outputs, over every float output."""
    worst = 1.0
    for want, got in zip(reference, reduced, strict=True):
        if not want.is_floating_point() or not want.numel():
            continue
        a = want.double().reshape(want.shape[0], -1)
        b = got.double().reshape(got.shape[0], -1)
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
        # Two all-zero rows agree exactly, though their cosine is undefined.
        both_zero = (a.abs().sum(dim=1) == 0) & (b.abs().sum(dim=1) == 0)
        worst = min(worst, float(torch.where(both_zero, 1.0, cosine).min()))
    return worst


def _top1(reference: Outputs, reduced: Outputs) -> float:
    """The share of instances whose first output's argmax is the same."""
    want, got = reference[0].float(), reduced[0].float()
    return float((want.argmax(dim=-1) == got.argmax(dim=-1)).double().mean())


MIN_COSINE = Agreement("min cosine to fp32", _min_cosine)
TOP1 = Agreement("top-1 agreement with fp32", _top1)


def max_abs_diff(expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> float:
    if len(expected) != len(actual):
        raise PackagingError(f"{len(actual)} outputs where the reference has {len(expected)}")
    worst = 0.0
    for want, got in zip(expected, actual, strict=True):
        if want.shape != got.shape:
            raise PackagingError(
                f"output shape {list(got.shape)} where the reference has {list(want.shape)}"
            )
        if want.numel():
            worst = max(worst, float((want.double() - got.double()).abs().max()))
    return worst


def float_outputs(outputs: object) -> tuple[torch.Tensor, ...]:
    """A model's outputs as float tensors on the host: what the comparisons above take."""
    return tuple(t.detach().float().cpu() for t in as_tuple(outputs))
