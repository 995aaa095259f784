"""The digits build: accurate, deterministic, and a well-formed, checksummed artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.packaging.bundled import digits
from service.runtime.manifest import Manifest
from service.runtime.repository import VersionRef, read_verified_manifest
from tests.digits_data import held_out

pytestmark = pytest.mark.integration  # builds the bundled models


def _predict(version_dir: Path, images: np.ndarray) -> np.ndarray:
    ref = VersionRef("digits", 1, version_dir)
    _, artifact = read_verified_manifest(ref)
    module = torch.export.load(str(artifact)).module()
    with torch.inference_mode():
        probabilities: np.ndarray = module(torch.from_numpy(images[:, None] / 16.0)).numpy()
    return probabilities


def test_manifest_records_what_the_server_needs(model_repo: Path) -> None:
    manifest = Manifest.read(model_repo / "digits" / "1")
    assert manifest.metrics["held_out_accuracy"] >= 0.95
    assert manifest.inputs[0].shape == [-1, 8, 8]
    assert manifest.labels == [str(d) for d in range(10)]
    assert manifest.max_batch_size == digits.MAX_BATCH_SIZE
    assert manifest.preprocessing["max_value"] == 16.0
    assert manifest.torch_version == torch.__version__


def test_rebuild_gives_identical_predictions(model_repo: Path, tmp_path: Path) -> None:
    digits.build(tmp_path)
    images, labels = held_out()
    first = _predict(model_repo / "digits" / "1", images)
    second = _predict(tmp_path / "digits" / "1", images)
    np.testing.assert_array_equal(first, second)
    assert float(np.mean(first.argmax(1) == labels)) >= 0.95


def test_artifact_loads_without_the_model_class(model_repo: Path) -> None:
    # The archive carries its graph: nothing from service.packaging is needed to run it.
    program = torch.export.load(str(model_repo / "digits" / "1" / "model.pt2"))
    out = program.module()(torch.zeros(5, 1, 8, 8))
    assert out.shape == (5, 10)
    assert torch.allclose(out.sum(1), torch.ones(5))
