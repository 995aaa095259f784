"""`torchdock package` on models that are not torchdock's: served by V1 and V2, equal to eager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from service.cli import main
from service.packaging.sources import module_from_factory
from service.runtime.manifest import Manifest
from tests.conftest import SettingsFactory, serve
from tests.packaging.user_models import eager, package, write_user_models

pytestmark = pytest.mark.integration


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    return write_user_models(tmp_path)


def report(label: str, expected: np.ndarray, actual: Any) -> float:
    difference = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max())
    print(f"{label}: max abs diff to eager {difference:.3g}")
    return difference


async def test_a_cnn_from_a_file_serves_v1_and_v2_like_eager(
    models_file: Path, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    repo = tmp_path / "repo"
    manifest = package(
        repo, "cnn", "--module", f"{models_file}:cnn", "--example-input", "float32:1x3x8x8"
    )
    assert manifest.task == "tensor"
    assert [s.model_dump() for s in manifest.inputs] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, 8, 8]}
    ]
    assert manifest.outputs[0].shape == [-1, 5]
    assert set(manifest.precision.measured_agreement) == {"bf16", "fp16"}
    images = np.random.default_rng(0).normal(size=(4, 3, 8, 8)).astype(np.float32)
    (expected,) = eager(models_file, "cnn", images)

    async with serve(make_settings(model_repository=repo, models=["cnn"], precision="fp32")) as c:
        r = await c.post("/v1/models/cnn:predict", json={"instances": images.tolist()})
        assert r.status_code == 200, r.text
        assert report("cnn V1", expected, r.json()["predictions"]) < 1e-5
        body = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [4, 3, 8, 8],
                            "data": images.reshape(-1).tolist()}]}  # fmt: skip
        r = await c.post("/v2/models/cnn/infer", json=body)
        assert r.status_code == 200, r.text
        (output,) = r.json()["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("output", "FP32", [4, 5])
        assert report("cnn V2", expected, np.reshape(output["data"], (4, 5))) < 1e-5
        r = await c.post("/v1/models/cnn:predict", json={"instances": [[[0.0] * 8] * 3]})
        assert r.status_code == 422
        assert "does not fit [3, 8, 8]" in r.json()["detail"]


async def test_two_inputs_and_two_outputs_by_name(
    models_file: Path, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    repo = tmp_path / "repo"
    manifest = package(
        repo, "heads", "--module", f"{models_file}:two_heads",
        "--example-input", "float32:2x4", "--example-input", "int64:2x3",
        "--output-name", "scores", "--output-name", "best",
    )  # fmt: skip
    assert [(s.name, s.datatype) for s in manifest.inputs] == [
        ("features", "FP32"),
        ("ids", "INT64"),
    ]
    assert [(s.name, s.datatype, s.shape) for s in manifest.outputs] == [
        ("scores", "FP32", [-1, 3]),
        ("best", "INT64", [-1]),
    ]
    features = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
    ids = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.int64)
    scores, best = eager(models_file, "two_heads", features, ids)

    async with serve(make_settings(model_repository=repo, models=["heads"], precision="fp32")) as c:
        rows = [
            {"features": f, "ids": i} for f, i in zip(features.tolist(), ids.tolist(), strict=True)
        ]
        by_rows = await c.post("/v1/models/heads:predict", json={"instances": rows})
        columns = {"features": features.tolist(), "ids": ids.tolist()}
        by_columns = await c.post("/v1/models/heads:predict", json={"inputs": columns})
        for r in (by_rows, by_columns):
            assert r.status_code == 200, r.text
            predictions = r.json()["predictions"]
            assert [p["best"] for p in predictions] == best.tolist()
            assert report("heads V1", scores, [p["scores"] for p in predictions]) < 1e-5
        body = {
            "inputs": [
                {"name": "ids", "datatype": "INT64", "shape": [3, 3], "data": ids.ravel().tolist()},
                {"name": "features", "datatype": "FP32", "shape": [3, 4],
                 "data": features.ravel().tolist()},
            ],
            "outputs": [{"name": "best"}],
        }  # fmt: skip
        r = await c.post("/v2/models/heads/infer", json=body)
        assert r.status_code == 200, r.text
        (output,) = r.json()["outputs"]
        assert (output["name"], output["datatype"], output["data"]) == (
            "best",
            "INT64",
            best.tolist(),
        )
        r = await c.post("/v1/models/heads:predict", json={"instances": [{"features": [0.0] * 4}]})
        assert r.status_code == 422
        assert "expected exactly the inputs ['features', 'ids']" in r.json()["detail"]


async def test_torchscript_and_exported_archives_are_served_like_eager(
    models_file: Path, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    module = module_from_factory(f"{models_file}:cnn")
    example = torch.randn(2, 3, 8, 8)
    script = tmp_path / "cnn-script.pt"
    with pytest.warns(DeprecationWarning, match="deprecated"):  # as a user's older tooling
        torch.jit.save(torch.jit.trace(module, example), str(script))
    example_file = tmp_path / "example.pt"
    torch.save(example, example_file)
    archive = tmp_path / "cnn.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(
        torch.export.export(module, (example,), dynamic_shapes=({0: batch},)), str(archive)
    )
    repo = tmp_path / "repo"
    scripted = package(repo, "scripted", "--torchscript", str(script),
                       "--example-input", str(example_file), "--input-name", "image")  # fmt: skip
    assert scripted.format == "torchscript"
    # No example input: the archive's own sample inputs are used.
    exported = package(repo, "exported", "--exported", str(archive))
    assert exported.format == "torch.export"
    assert exported.inputs[0].shape == [-1, 3, 8, 8]

    images = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    (expected,) = eager(models_file, "cnn", images)
    settings = make_settings(
        model_repository=repo, models=["scripted", "exported"], precision="fp32"
    )
    async with serve(settings) as c:
        for name in ("scripted", "exported"):
            r = await c.post(f"/v1/models/{name}:predict", json={"instances": images.tolist()})
            assert r.status_code == 200, r.text
            assert report(name, expected, r.json()["predictions"]) < 1e-5


@pytest.mark.parametrize(
    ("factory", "example", "message"),
    [
        ("data_dependent", "float32:2x3", "does not export with torch.export"),
        ("cnn", "float32:1x3x9x9", "the example input does not fit the module"),
        ("not_a_module", "float32:1x3", "returned a int, not an nn.Module"),
        ("missing_factory", "float32:1x3", "'missing_factory' is not a function there"),
        ("cnn", "complex64:1x3", "dtype 'complex64' is not one of"),
        ("cnn", "no-such-file.npy", "neither a file nor DTYPE:SHAPE"),
    ],
)
def test_what_cannot_be_packaged_is_refused_in_one_line(
    models_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    factory: str,
    example: str,
    message: str,
) -> None:
    repo = tmp_path / "repo"
    args = ["package", "--output", str(repo), "--name", "m",
            "--module", f"{models_file}:{factory}", "--example-input", example]  # fmt: skip
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("torchdock package: ")
    assert message in error
    assert len(error.splitlines()) == 1
    assert not (repo / "m").exists() or not any((repo / "m").iterdir())


def test_an_existing_version_is_replaced_only_with_force(
    models_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    args = ["package", "--output", str(repo), "--name", "cnn", "--version", "3",
            "--module", f"{models_file}:cnn", "--example-input", "float32:1x3x8x8"]  # fmt: skip
    assert main(args) == 0
    first = Manifest.read(repo / "cnn" / "3")
    assert main(args) == 2
    assert "cnn/3 already exists" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert Manifest.read(repo / "cnn" / "3").created_at >= first.created_at
    # Without --version, the next one up.
    assert main(args[:5] + args[7:]) == 0
    assert (repo / "cnn" / "4" / "manifest.json").is_file()


def test_missing_source_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for source in (["--torchscript", str(tmp_path / "nope.pt"), "--example-input", "float32:1x2"],
                   ["--exported", str(tmp_path / "nope.pt2")]):  # fmt: skip
        assert main(["package", "--output", str(tmp_path), "--name", "m", *source]) == 2
        assert "nope.pt" in capsys.readouterr().err
