"""ONNX variants: parity with the eager artifact under ONNX Runtime, and how a server picks them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.packaging.errors import PackagingError
from service.packaging.package import PackageRequest, package_torchscript
from service.runtime import onnx_session
from service.runtime.manifest import Manifest
from service.runtime.onnx_session import OnnxModule
from tests.conftest import SettingsFactory, serve
from tests.digits_data import held_out
from tests.packaging.user_models import eager, package, write_user_models
from tests.packaging.variants import eager_artifact, embeddings, load_version, served_embeddings
from tests.sentences import SENTENCES

pytestmark = pytest.mark.integration

LONG_TEXT = " ".join(SENTENCES)  # truncated to the model's 256 tokens


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnx_minilm_matches_the_eager_artifact(variant_repo: Path, batch: int) -> None:
    directory = variant_repo / "minilm" / "1"
    texts = ([LONG_TEXT] + SENTENCES * 2)[:batch]  # every shape: 256 tokens down to a few
    onnx = OnnxModule(directory / "model.fp32.onnx", threads=1)
    want = embeddings(eager_artifact(directory), directory, texts)
    got = embeddings(onnx, directory, texts)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_onnx_digits_classify_as_the_eager_artifact(variant_repo: Path) -> None:
    directory = variant_repo / "digits" / "1"
    images, _ = held_out()
    inputs = torch.from_numpy(images).float().reshape(-1, 1, 8, 8)
    with torch.inference_mode():
        want = eager_artifact(directory)(inputs)
    got = OnnxModule(directory / "model.fp32.onnx", threads=1)(inputs)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_the_manifest_pins_the_onnx_variant(variant_repo: Path) -> None:
    manifest = Manifest.read(variant_repo / "minilm" / "1")
    variant = manifest.onnx
    assert variant is not None
    assert variant.file in manifest.files  # its sha256, checked at every load
    assert (variant.precision, variant.opset) == ("fp32", 18)
    assert variant.exported_by == torch.__version__
    assert variant.max_abs_diff <= 1e-4
    assert variant.agreement >= manifest.precision.min_agreement


async def test_an_unvouched_server_serves_the_onnx_variant_with_the_same_answers(
    variant_repo: Path, make_settings: SettingsFactory
) -> None:
    """An ONNX graph is data, not code: it needs no MODEL_TRUST, only its sha256."""
    answers = {}
    for runtime in ("onnx", "eager"):
        settings = make_settings(
            model_repository=variant_repo, models=["minilm"], precision="fp32", runtime=runtime
        )
        served, answers[runtime] = await served_embeddings(settings, [LONG_TEXT, *SENTENCES[:7]])
        assert served == runtime
    np.testing.assert_allclose(answers["onnx"], answers["eager"], atol=1e-4)


def test_a_reduced_precision_is_served_by_torch(variant_repo: Path) -> None:
    model = load_version(variant_repo / "digits" / "1", "onnx", precision="bf16")
    assert model.runtime.runtime == "eager"
    assert "the ONNX variant is fp32, serving bf16" in model.runtime.reason


def test_without_onnx_runtime_the_version_is_served_by_torch(
    variant_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = onnx_session.importlib.util.find_spec
    monkeypatch.setattr(
        onnx_session.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    model = load_version(variant_repo / "digits" / "1", "onnx")
    assert model.runtime.runtime == "eager"
    assert "ONNX Runtime is not installed" in model.runtime.reason


def test_auto_times_every_usable_runtime_and_says_which_won(variant_repo: Path) -> None:
    model = load_version(variant_repo / "minilm" / "1", "auto")
    assert model.runtime.runtime in ("eager", "compiled", "onnx")
    reason = model.runtime.reason
    assert "RUNTIME=auto" in reason
    assert all(f"{name} " in reason for name in ("compiled", "onnx", "eager")), reason
    assert len(model.forward(SENTENCES[:3])) == 3


def test_torchscript_has_no_onnx_variant(tmp_path: Path) -> None:
    archive = tmp_path / "linear.pt"
    with pytest.warns(DeprecationWarning, match="deprecated"):  # as a user's older tooling
        torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2), torch.ones(2, 4)), str(archive))
    request = PackageRequest(output=tmp_path / "repo", name="linear", onnx=True)
    with pytest.raises(PackagingError, match=r"--onnx takes torch\.export artifacts only"):
        package_torchscript(archive, request, (torch.ones(2, 4),))


async def test_a_packaged_module_with_two_outputs_serves_through_onnx_runtime(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    models_file = write_user_models(tmp_path)
    repo = tmp_path / "repo"
    manifest = package(
        repo, "heads", "--module", f"{models_file}:two_heads", "--onnx",
        "--example-input", "float32:2x4", "--example-input", "int64:2x3",
        "--output-name", "scores", "--output-name", "best",
    )  # fmt: skip
    assert manifest.onnx is not None and manifest.onnx.max_abs_diff <= 1e-5
    features = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    scores, best = eager(models_file, "two_heads", features, ids)
    settings = make_settings(
        model_repository=repo, models=["heads"], precision="fp32", runtime="onnx"
    )
    async with serve(settings) as http:
        listed = (await http.get("/v1/models")).json()["models"][0]["versions"][0]
        assert listed["runtime"] == "onnx"
        rows = [
            {"features": f, "ids": i} for f, i in zip(features.tolist(), ids.tolist(), strict=True)
        ]
        response = await http.post("/v1/models/heads:predict", json={"instances": rows})
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
    np.testing.assert_allclose([p["scores"] for p in predictions], scores, atol=1e-5)
    assert [p["best"] for p in predictions] == best.tolist()
