"""The native caches `torchdock serve` caps: with its capacities, bf16 forwards over many new
input shapes keep memory bounded; with the libraries' defaults they do not. A torch that stops
reading either variable fails here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cli import NATIVE_CACHE_CAPACITIES
from service.runtime.device import cpu_bf16_flags

pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        not cpu_bf16_flags(), reason="bf16 linears go through oneDNN on CPUs with bf16 only"
    ),
]

# minilm's feed-forward block in bf16, run at 300 batch sizes it has not seen.
GROWTH_OVER_NEW_SHAPES = """
import torch
torch.set_num_threads(1)

def anonymous_mb():
    with open("/proc/self/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("RssAnon")) / 1024

block = torch.nn.Sequential(torch.nn.Linear(384, 1536), torch.nn.GELU(), torch.nn.Linear(1536, 384))
block = block.to(torch.bfloat16).eval()
with torch.inference_mode():
    for rows in range(1, 9):
        block(torch.randn(rows, 384, dtype=torch.bfloat16))
    before = anonymous_mb()
    for rows in range(9, 309):
        block(torch.randn(rows, 384, dtype=torch.bfloat16))
print(anonymous_mb() - before)
"""


def growth_mb(capacities: dict[str, str]) -> float:
    env = {k: v for k, v in os.environ.items() if k not in NATIVE_CACHE_CAPACITIES}
    result = subprocess.run(
        [sys.executable, "-c", GROWTH_OVER_NEW_SHAPES],
        env=env | capacities,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(result.stdout)


def test_the_capacities_serve_sets_bound_memory_over_new_shapes() -> None:
    capped = growth_mb(NATIVE_CACHE_CAPACITIES)
    uncapped = growth_mb({})
    # Measured on an Intel Xeon with AMX: 43 MB capped, 436 MB with the defaults; one cap
    # alone left 268 or 422 MB.
    assert capped < 120, f"capped growth {capped:.0f} MB"
    assert uncapped > 2 * capped, f"uncapped {uncapped:.0f} MB against capped {capped:.0f} MB"
