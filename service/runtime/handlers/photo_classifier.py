"""RGB photo classification (a torchvision-style classifier): resize, centre crop, normalise.

Items are float32 arrays (3, crop, crop), already normalised: what V2 clients send as the
model's `image` tensor, and what a V1 `{"b64": ...}` photo becomes after the manifest's
preprocessing (`resize` of the shorter side, `crop`, `mean`, `std`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.runtime.dtypes import numeric_array
from service.runtime.errors import InvalidInput, ModelLoadError
from service.runtime.handlers.base import Prepared
from service.runtime.handlers.classification import ClassifierHandler
from service.runtime.handlers.images import ImageBudget, converted
from service.runtime.manifest import Manifest

# Normalised pixels of a real photo lie within a few units of 0; these bounds only refuse
# values that no preprocessing produces.
_MAX_ABS_VALUE = 1e3


class PhotoClassifierHandler(ClassifierHandler[np.ndarray]):
    blocking_decode = True

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        pre = manifest.preprocessing
        try:
            self.resize = int(pre["resize"])
            self.crop = int(pre["crop"])
            self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
            self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        except (KeyError, TypeError, ValueError) as e:
            raise ModelLoadError(f"preprocessing needs resize, crop, mean and std: {e}") from e
        self.budget = ImageBudget.from_preprocessing(pre)
        self.input_name = manifest.inputs[0].name
        self.shape = (3, self.crop, self.crop)

    def instances_from_json(self, instances: Sequence[Any]) -> list[np.ndarray]:
        with self.budget.opened(instances) as images:
            return [self._instance(i, instance, images.get(i))
                    for i, instance in enumerate(instances)]  # fmt: skip

    def _instance(self, index: int, instance: Any, image: Image.Image | None) -> np.ndarray:
        if image is not None:
            return self.photo_to_tensor(image, index=index)
        pixels = numeric_array(instance, "FP32", where=f"instance {index}")
        if pixels.shape != self.shape:
            raise InvalidInput(
                f"instance {index}: expected shape {list(self.shape)}, got {list(pixels.shape)}"
            )
        self._check(pixels, where=f"instance {index}")
        return pixels

    @staticmethod
    def _check(pixels: np.ndarray, *, where: str) -> None:
        if not np.isfinite(pixels).all() or np.abs(pixels).max() > _MAX_ABS_VALUE:
            raise InvalidInput(f"{where}: values must be finite, normalised pixels")

    def photo_to_tensor(self, image: Image.Image, *, index: int) -> np.ndarray:
        image = converted(image, index=index, mode="RGB", draft_size=(self.resize, self.resize))
        scale = self.resize / min(image.size)
        size = (
            max(self.crop, round(image.width * scale)),
            max(self.crop, round(image.height * scale)),
        )
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        image = image.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0
        normalised: np.ndarray = (pixels - self.mean) / self.std
        return normalised

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        pixels = tensors[self.input_name].astype(np.float32, copy=False)
        self._check(pixels, where=f"input {self.input_name!r}")
        return list(pixels)

    def instance_key(self, item: np.ndarray) -> bytes:
        return np.ascontiguousarray(item, dtype=np.float32).tobytes()

    def preprocess(self, items: list[np.ndarray]) -> Prepared:
        return Prepared((torch.from_numpy(np.stack(items)),))

    def warmup_items(self) -> list[np.ndarray]:
        return [np.zeros(self.shape, dtype=np.float32)]
