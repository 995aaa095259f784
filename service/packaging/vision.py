"""`--torchvision ARCH --weights FILE`: an RGB photo classifier, and what any such model needs.

The exported graph ends in a softmax; resize, crop, mean and std go into the manifest, where
the `rgb-image-classification` handler reads them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from service.packaging import agreement
from service.packaging.errors import PackagingError
from service.packaging.package import PackageRequest, package_module
from service.runtime.manifest import Manifest, TensorSpec

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class PhotoPreprocessing:
    resize: int = 256
    crop: int = 224
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


class _Probabilities(torch.nn.Module):
    def __init__(self, logits: torch.nn.Module) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(image), dim=1)


def package_photo_classifier(
    module: torch.nn.Module,
    request: PackageRequest,
    preprocessing: PhotoPreprocessing,
    labels: list[str] | None,
) -> Manifest:
    crop = preprocessing.crop
    generator = torch.Generator().manual_seed(0)
    classifier = _Probabilities(module.eval())
    with torch.inference_mode():
        classes = int(classifier(torch.zeros(1, 3, crop, crop)).shape[1])
    if labels is not None and len(labels) != classes:
        raise PackagingError(f"{len(labels)} labels for a model with {classes} classes")
    request.task = "image-classification"
    request.handler = "rgb-image-classification"
    request.inputs = [TensorSpec(name="image", datatype="FP32", shape=[-1, 3, crop, crop])]
    request.outputs = [
        TensorSpec(name="label", datatype="INT64", shape=[-1]),
        TensorSpec(name="probabilities", datatype="FP32", shape=[-1, classes]),
    ]
    request.labels = labels
    request.preprocessing = {
        **asdict(preprocessing),
        "top_k": min(5, classes),
        **request.preprocessing,
    }
    request.agreement = agreement.TOP1
    request.calibration = (torch.randn(16, 3, crop, crop, generator=generator),)
    return package_module(
        classifier, (torch.randn(2, 3, crop, crop, generator=generator),), request
    )


def torchvision_module(architecture: str, weights: Path, classes: int) -> torch.nn.Module:
    """A torchvision architecture with local weights: no download, no pickle."""
    try:
        import torchvision
    except Exception as e:  # a torchvision built for another torch fails in many ways
        raise PackagingError(
            f"--torchvision needs torchvision built for torch {torch.__version__}: {e}"
        ) from e
    try:
        model: torch.nn.Module = torchvision.models.get_model(
            architecture, weights=None, num_classes=classes
        )
    except ValueError as e:
        raise PackagingError(f"--torchvision {architecture!r}: {e}") from e
    try:
        model.load_state_dict(read_weights(weights))
    except RuntimeError as e:
        raise PackagingError(f"{weights.name} does not fit {architecture}: {e}") from e
    return model


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a torch.save file through the weights-only
    unpickler, which cannot run code."""
    if not path.is_file():
        raise PackagingError(f"{path} is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # safetensors and the weights-only unpickler raise many types
        raise PackagingError(f"{path.name}: not a weights-only state dict: {e}") from e
    if not isinstance(state, dict):
        raise PackagingError(f"{path.name}: expected a state dict, got {type(state).__name__}")
    return state
