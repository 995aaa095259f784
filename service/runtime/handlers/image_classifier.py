"""Small grayscale image classification (the bundled `digits` model)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from service.runtime.dtypes import numeric_array
from service.runtime.errors import InvalidInput
from service.runtime.handlers.base import Prepared
from service.runtime.handlers.classification import ClassifierHandler
from service.runtime.handlers.images import ImageBudget, converted
from service.runtime.manifest import Manifest


class ImageClassifierHandler(ClassifierHandler[np.ndarray]):
    """Items are float32 arrays of shape (size, size) with values in [0, max_value]."""

    blocking_decode = True

    def __init__(self, manifest: Manifest, directory: Path) -> None:
        super().__init__(manifest, directory)
        pre = manifest.preprocessing
        self.size = int(pre["image_size"])
        self.max_value = float(pre["max_value"])
        self.input_name = manifest.inputs[0].name
        self.budget = ImageBudget.from_preprocessing(pre)

    def instances_from_json(self, instances: Sequence[Any]) -> list[np.ndarray]:
        with self.budget.opened(instances) as images:
            return [self._decode_instance(i, instance, images.get(i))
                    for i, instance in enumerate(instances)]  # fmt: skip

    def _decode_instance(self, index: int, instance: Any, image: Image.Image | None) -> np.ndarray:
        if image is not None:
            return self.image_to_pixels(image, index=index)
        # Numbers only: "7" and true are not pixels.
        pixels = numeric_array(instance, "FP32", where=f"instance {index}")
        if pixels.shape == (self.size * self.size,):
            pixels = pixels.reshape(self.size, self.size)
        if pixels.shape != (self.size, self.size):
            raise InvalidInput(
                f"instance {index}: expected shape [{self.size}, {self.size}] (or"
                f" {self.size * self.size} flat values), got {list(pixels.shape)}"
            )
        self._check_range(pixels, where=f"instance {index}")
        return pixels

    def _check_range(self, pixels: np.ndarray, *, where: str) -> None:
        if not np.isfinite(pixels).all():
            raise InvalidInput(f"{where}: NaN or infinite values are not allowed")
        if pixels.min() < 0 or pixels.max() > self.max_value:
            raise InvalidInput(f"{where}: values must lie in [0, {self.max_value:g}]")

    def image_to_pixels(self, image: Image.Image, *, index: int) -> np.ndarray:
        """An opened PNG or JPEG to the model's grid: grayscale, resized, ink bright."""
        gray = converted(image, index=index, mode="L")
        gray = gray.resize((self.size, self.size), Image.Resampling.BOX)
        pixels = np.asarray(gray, dtype=np.float32)
        # The training data is bright ink on a dark ground; most images are the reverse.
        if pixels.mean() > 127.5:
            pixels = 255.0 - pixels
        return pixels * (self.max_value / 255.0)

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        pixels = tensors[self.input_name].astype(np.float32, copy=False)
        self._check_range(pixels, where=f"input {self.input_name!r}")
        return list(pixels.reshape(-1, self.size, self.size))

    def instance_key(self, item: np.ndarray) -> bytes:
        # After decoding: nested, flat and image inputs of the same pixels share one key.
        return np.ascontiguousarray(item, dtype=np.float32).tobytes()

    def preprocess(self, items: list[np.ndarray]) -> Prepared:
        batch = np.stack(items)[:, None, :, :] / self.max_value
        return Prepared((torch.from_numpy(batch.astype(np.float32, copy=False)),))

    def warmup_items(self) -> list[np.ndarray]:
        return [np.zeros((self.size, self.size), dtype=np.float32)]
