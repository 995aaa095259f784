"""RGB photo classifiers: real PNG and JPEG photos through resize, crop and normalise, like eager.

The reference applies the documented preprocessing step by step with PIL and numpy, then the
eager module; the service must give the same probabilities.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.cli import main
from service.packaging.package import PackageRequest
from service.packaging.sources import module_from_factory
from service.packaging.vision import PhotoPreprocessing, package_photo_classifier
from service.runtime.manifest import Manifest
from tests.conftest import SettingsFactory, serve
from tests.packaging.user_models import write_user_models

pytestmark = pytest.mark.integration

PRE = PhotoPreprocessing(resize=40, crop=32, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
LABELS = ["cat", "dog", "car", "tree", "boat", "cup", "lamp"]


def _photo(width: int, height: int, seed: int) -> Image.Image:
    """A smooth colour field with a bright blob: something a camera could have taken."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(x * rng.uniform(2, 9) + y * rng.uniform(2, 9)) for _ in range(3)]
    field = (np.stack(channels, axis=2) + 1) * 110
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    field += 60 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) * 40)[..., None]
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB")


def _b64(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _reference_tensor(image: Image.Image) -> np.ndarray:
    scale = PRE.resize / min(image.size)
    size = (round(image.width * scale), round(image.height * scale))
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (size[0] - PRE.crop) // 2, (size[1] - PRE.crop) // 2
    cropped = np.asarray(resized.crop((left, top, left + PRE.crop, top + PRE.crop)))
    pixels = cropped.astype(np.float32).transpose(2, 0, 1) / 255.0
    mean = np.array(PRE.mean, dtype=np.float32)[:, None, None]
    std = np.array(PRE.std, dtype=np.float32)[:, None, None]
    return (pixels - mean) / std


async def test_photos_are_classified_like_eager(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    models_file = write_user_models(tmp_path)
    module = module_from_factory(f"{models_file}:tiny_resnet")
    repo = tmp_path / "repo"
    request = PackageRequest(output=repo, name="photos", preprocessing={"max_pixels": 200_000})
    manifest = package_photo_classifier(module, request, PRE, LABELS)
    assert (manifest.task, manifest.handler) == ("image-classification", "rgb-image-classification")
    assert manifest.inputs[0].shape == [-1, 3, 32, 32]
    assert manifest.outputs[1].shape == [-1, 7]

    photos = [_photo(120, 90, 1), _photo(64, 100, 2), _photo(300, 200, 3)]
    tensors = np.stack([_reference_tensor(p) for p in photos])
    with torch.inference_mode():
        expected = torch.softmax(module(torch.from_numpy(tensors)), dim=1).numpy()

    settings = make_settings(model_repository=repo, models=["photos"], precision="fp32")
    async with serve(settings) as c:
        instances = [{"b64": _b64(p, "PNG")} for p in photos]
        r = await c.post("/v1/models/photos:predict", json={"instances": instances})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        served = np.array([p["probabilities"] for p in predictions])
        difference = float(np.abs(served - expected).max())
        print(f"photos V1 (PNG): max abs diff to eager {difference:.3g}")
        assert difference < 1e-5
        assert [p["label_name"] for p in predictions] == [LABELS[i] for i in expected.argmax(1)]

        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 3, 32, 32],
                            "data": tensors.reshape(-1).tolist()}]}  # fmt: skip
        r = await c.post("/v2/models/photos/infer", json=body)
        assert r.status_code == 200, r.text
        probabilities = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
        assert np.abs(np.reshape(probabilities["data"], (3, 7)) - expected).max() < 1e-5

        # A JPEG, decoded in draft mode when it is much larger than the model needs.
        jpeg = {"b64": _b64(_photo(400, 300, 4), "JPEG")}
        r = await c.post("/v1/models/photos:predict", json={"instances": [jpeg]})
        assert r.status_code == 200, r.text
        assert abs(sum(r.json()["predictions"][0]["probabilities"]) - 1) < 1e-5

        too_big = {"b64": _b64(_photo(600, 400, 5), "PNG")}  # 240,000 > 200,000 pixels
        r = await c.post("/v1/models/photos:predict", json={"instances": [too_big]})
        assert r.status_code == 422
        assert "600x400 is more than 200000 pixels" in r.json()["detail"]
        gif = io.BytesIO()
        _photo(40, 40, 6).save(gif, format="GIF")
        r = await c.post(
            "/v1/models/photos:predict",
            json={"instances": [{"b64": base64.b64encode(gif.getvalue()).decode()}]},
        )
        assert r.status_code == 422
        assert "only PNG and JPEG" in r.json()["detail"]


def test_torchvision_source_refuses_without_local_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["package", "--output", str(tmp_path), "--name", "r", "--torchvision", "resnet18",
            "--task", "image-classification"]  # fmt: skip
    assert main(args) == 2
    assert "--torchvision needs --weights FILE (nothing is downloaded)" in capsys.readouterr().err


def test_torchvision_resnet18_with_random_local_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torchvision = pytest.importorskip(
        "torchvision", reason="needs a torchvision built for this torch", exc_type=ImportError
    )
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), weights)
    labels = tmp_path / "labels.txt"
    labels.write_text("ant\nbee\nwasp\n")
    args = ["package", "--output", str(tmp_path / "repo"), "--name", "r",
            "--torchvision", "resnet18", "--weights", str(weights), "--labels", str(labels),
            "--task", "image-classification"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    manifest = Manifest.read(tmp_path / "repo" / "r" / "1")
    assert manifest.labels == ["ant", "bee", "wasp"]
    assert manifest.preprocessing["crop"] == 224
