"""Train the bundled `digits` classifier on scikit-learn's handwritten digits and export it.

Deterministic: a fixed seed, deterministic kernels and one thread give the same weights, and so
the same predictions, on every build from the same inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from service.packaging.package import PackageRequest, package_module
from service.runtime.manifest import Manifest, ModelPrecision, TensorSpec

logger = logging.getLogger(__name__)

SEED = 20240607
IMAGE_SIZE = 8
MAX_VALUE = 16.0
MAX_BATCH_SIZE = 64
MIN_ACCURACY = 0.95


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`pixels`: (batch, 1, 8, 8) in [0, 1]. Returns class probabilities (batch, 10)."""
        return torch.softmax(self.classifier(self.features(pixels)), dim=1)


def load_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, stratified 80/20 split of the 1,797 digits: x_train, y_train, x_test, y_test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, data.target, test_size=0.2, random_state=SEED, stratify=data.target
    )
    return x_train, y_train.astype(np.int64), x_test, y_test.astype(np.int64)


def train(x_train: np.ndarray, y_train: np.ndarray, *, epochs: int = 40) -> DigitsCNN:
    torch.manual_seed(SEED)
    model = DigitsCNN()
    inputs = torch.from_numpy(x_train[:, None] / MAX_VALUE)
    targets = torch.from_numpy(y_train)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.NLLLoss()
    order = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(epochs):
        permutation = torch.randperm(len(inputs), generator=order)
        for start in range(0, len(inputs), 64):
            idx = permutation[start : start + 64]
            optimizer.zero_grad()
            loss = loss_fn(torch.log(model(inputs[idx]) + 1e-9), targets[idx])
            loss.backward()
            optimizer.step()
    return model.eval()


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(x[:, None] / MAX_VALUE)).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def build(
    output: Path,
    *,
    version: int = 1,
    name: str = "digits",
    compile: tuple[ModelPrecision, ...] = (),
    onnx: bool = False,
) -> Manifest:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        x_train, y_train, x_test, y_test = load_dataset()
        model = train(x_train, y_train)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    held_out = accuracy(model, x_test, y_test)
    if held_out < MIN_ACCURACY:
        raise RuntimeError(f"digits accuracy {held_out:.4f} is below {MIN_ACCURACY}")
    request = PackageRequest(
        output=output,
        name=name,
        version=version,
        force=True,  # a rebuild replaces the version: builds are deterministic
        task="image-classification",
        inputs=[TensorSpec(name="pixels", datatype="FP32", shape=[-1, IMAGE_SIZE, IMAGE_SIZE])],
        outputs=[
            TensorSpec(name="label", datatype="INT64", shape=[-1]),
            TensorSpec(name="probabilities", datatype="FP32", shape=[-1, 10]),
        ],
        labels=[str(d) for d in range(10)],
        preprocessing={
            "image_size": IMAGE_SIZE,
            "max_value": MAX_VALUE,
            "scale": "pixels / max_value",
            "images": "PNG/JPEG: grayscale, box-resized to 8x8, inverted when the ground is"
            " light, scaled to [0, 16]",
        },
        max_batch_size=MAX_BATCH_SIZE,
        metrics={
            "held_out_accuracy": round(held_out, 6),
            "held_out_samples": len(y_test),
            "train_samples": len(y_train),
        },
        source={"dataset": "sklearn.datasets.load_digits", "seed": SEED},
        # A model this small gains nothing from a reduced precision: always fp32.
        precisions=(),
        compile=compile,
        onnx=onnx,
    )
    manifest = package_module(model, (torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE),), request)
    logger.info("built digits", extra={"version": version, "held_out_accuracy": held_out})
    return manifest
