"""Versions of `digits` for rollout tests: the bundled one copied under another number (the
same predictions), and classifiers of the same interface that disagree with it, or are slow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from service.packaging.package import PackageRequest, package_module
from service.runtime.manifest import TensorSpec


def copy_version(repo: Path, source: int, target: int, model: str = "digits") -> None:
    destination = repo / model / str(target)
    shutil.copytree(repo / model / str(source), destination)
    manifest = json.loads((destination / "manifest.json").read_text())
    manifest["version"] = target
    (destination / "manifest.json").write_text(json.dumps(manifest))


class OtherClassifier(nn.Module):
    """Digits' interface, its own random weights; `work` products of a (64, width) by a
    (width, width) matrix per instance make it as slow as asked without changing what it
    predicts: few, large operations, like a real model's."""

    def __init__(self, seed: int, *, work: int = 0, width: int = 384) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(64, 10)
        self.work = work
        self.square = nn.Parameter(torch.randn(width, width) / width**0.5, requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        flat = pixels.flatten(1)  # (batch, 1, 8, 8), already scaled to [0, 1]
        if self.work:
            busy = self.square.new_ones(pixels.shape[0], 64, self.square.shape[0])
            for _ in range(self.work):
                busy = torch.tanh(busy @ self.square)
            flat = flat + 0.0 * busy.sum(dim=(1, 2)).unsqueeze(1)
        return torch.softmax(self.head(flat), dim=1)


def package_classifier(
    repo: Path, version: int, module: nn.Module, *, max_batch_size: int | None = None
) -> None:
    """`module` as a version of digits, with digits' preprocessing and labels; a slow one
    loads sooner with a smaller `max_batch_size`, the largest batch its warm-up runs."""
    bundled = json.loads((repo / "digits" / "1" / "manifest.json").read_text())
    package_module(
        module,
        (torch.zeros(2, 1, 8, 8),),
        PackageRequest(
            output=repo,
            name="digits",
            version=version,
            task="image-classification",
            inputs=[TensorSpec(name="pixels", datatype="FP32", shape=[-1, 8, 8])],
            outputs=[
                TensorSpec(name="label", datatype="INT64", shape=[-1]),
                TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10]),
            ],
            labels=bundled["labels"],
            preprocessing=bundled["preprocessing"],
            max_batch_size=max_batch_size or bundled["max_batch_size"],
            precisions=(),
        ),
    )


class FlakyClassifier(OtherClassifier):
    """Fails every instance whose first pixel is at least 80% of the range: its index into a
    table of four rows is then out of bounds (an error the forward pass raises at run time)."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.table = nn.Parameter(torch.zeros(4), requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        flat = pixels.flatten(1)
        row = (flat[:, 0] * 5).long()
        return torch.softmax(self.head(flat) + self.table[row].unsqueeze(1), dim=1)
