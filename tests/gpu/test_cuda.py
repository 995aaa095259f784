"""CUDA paths: skipped only where no CUDA device is present; run them on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import SettingsFactory, serve
from tests.digits_data import held_out

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device present"),
]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
async def test_digits_on_cuda_matches_cpu(make_settings: SettingsFactory, precision: str) -> None:
    images, _ = held_out()
    body = {"instances": images[:64].tolist()}
    async with serve(make_settings(device="cpu", precision="fp32")) as cpu:
        expected = (await cpu.post("/v1/models/digits:predict", json=body)).json()
    async with serve(make_settings(device="cuda", precision=precision)) as gpu:
        models = (await gpu.get("/v1/models")).json()["models"]
        assert models[0]["versions"][0]["device"].startswith("cuda")
        assert models[0]["versions"][0]["precision"] == precision
        got = (await gpu.post("/v1/models/digits:predict", json=body)).json()
    cpu_probs = np.array([p["probabilities"] for p in expected["predictions"]])
    gpu_probs = np.array([p["probabilities"] for p in got["predictions"]])
    tolerance = 1e-4 if precision == "fp32" else 3e-2
    assert np.abs(cpu_probs - gpu_probs).max() < tolerance
    agree = np.mean(cpu_probs.argmax(1) == gpu_probs.argmax(1))
    assert agree >= 0.98


def test_cuda_device_index_out_of_range_is_refused() -> None:
    from service.runtime.device import resolve_device
    from service.runtime.errors import DeviceError

    with pytest.raises(DeviceError, match="visible"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize(("precision", "bound"), [("fp32", 0.9999), ("fp16", 0.999)])
def test_minilm_parity_on_cuda(model_repo: Path, precision: str, bound: float) -> None:
    from service.runtime.device import PrecisionChoice
    from service.runtime.handlers.text_embedding import TextEmbeddingHandler
    from service.runtime.loading import load_module
    from service.runtime.manifest import Manifest
    from tests.sentences import SENTENCES

    directory = model_repo / "minilm" / "1"
    handler = TextEmbeddingHandler(Manifest.read(directory), directory)
    prepared = handler.preprocess(SENTENCES)
    artifact = directory / "model.pt2"
    cpu = load_module(artifact, torch.device("cpu"), PrecisionChoice("fp32", "test"))
    gpu = load_module(artifact, torch.device("cuda"), PrecisionChoice(precision, "test"))  # type: ignore[arg-type]
    with torch.inference_mode():
        expected = cpu(*prepared.inputs).float()
        got = gpu(*(t.cuda() for t in prepared.inputs)).float().cpu()
    cosine = (expected * got).sum(1) / got.norm(dim=1)
    assert float(cosine.min()) >= bound
