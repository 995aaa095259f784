"""Models that are not torchdock's, as a user would write them (source text for a temp file),
and how the tests package them and run them eagerly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from service.cli import main
from service.packaging.sources import module_from_factory
from service.runtime.manifest import Manifest

SOURCE = '''
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 5)

    def forward(self, image):
        return self.head(torch.relu(self.conv(image)).flatten(1))


class TwoHeads(nn.Module):
    """Two inputs of different dtypes, two outputs."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 4)  # random example ids are drawn from [0, 100)
        self.mix = nn.Linear(4, 3)

    def forward(self, features, ids):
        mixed = self.mix(features + self.embed(ids).mean(dim=1))
        return mixed, mixed.argmax(dim=1)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on values: torch.export cannot trace it
            return x * 2
        return x


class TinyResNet(nn.Module):
    """A residual block and a 7-class head: the shape of a torchvision classifier, smaller."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, kernel_size=3, stride=2, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 7)

    def forward(self, image):
        x = torch.relu(self.stem(image))
        x = x + self.block(x)
        return self.fc(x.mean(dim=(2, 3)))


def tiny_resnet():
    torch.manual_seed(2)
    return TinyResNet().eval()


def cnn():
    torch.manual_seed(0)
    return SmallCNN().eval()


def two_heads():
    torch.manual_seed(1)
    return TwoHeads().eval()


def data_dependent():
    return DataDependent()


def not_a_module():
    return 42
'''


def write_user_models(directory: Path) -> Path:
    path = directory / "user_models.py"
    path.write_text(SOURCE)
    return path


def package(repo: Path, name: str, *args: str) -> Manifest:
    assert main(["package", "--output", str(repo), "--name", name, *args]) == 0
    versions = sorted(int(p.name) for p in (repo / name).iterdir() if p.name.isdigit())
    return Manifest.read(repo / name / str(versions[-1]))


def eager(models_file: Path, factory: str, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    module = module_from_factory(f"{models_file}:{factory}")
    with torch.inference_mode():
        out = module(*(torch.from_numpy(i) for i in inputs))
    return tuple(o.numpy() for o in (out if isinstance(out, tuple) else (out,)))
