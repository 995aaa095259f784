"""Compiled variants (AOTInductor): parity with the eager artifact, and how a server picks them
(and falls back from any variant that does not load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from service.config import RuntimeSetting
from service.runtime.compiled import load_compiled
from service.runtime.manifest import Manifest
from service.runtime.trust import digest_lines
from tests.conftest import SettingsFactory, serve
from tests.digits_data import ZEROS, held_out
from tests.packaging.variants import eager_artifact, embeddings, load_version, served_embeddings
from tests.sentences import SENTENCES

# variant_repo runs inductor and a C++ compiler, and the ONNX exporter: a minute for both
# models, once a session.
pytestmark = pytest.mark.integration

LONG_TEXT = " ".join(SENTENCES)  # truncated to the model's 256 tokens


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_compiled_fp32_minilm_matches_the_eager_artifact(variant_repo: Path, batch: int) -> None:
    directory = variant_repo / "minilm" / "1"
    texts = ([LONG_TEXT] + SENTENCES * 2)[:batch]  # every shape: 256 tokens down to a few
    eager = eager_artifact(directory)
    compiled = load_compiled(directory / "model.fp32.cpu.aoti.pt2")
    want = embeddings(eager, directory, texts)
    got = embeddings(compiled, directory, texts)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_compiled_bf16_minilm_stays_within_the_models_bound(variant_repo: Path) -> None:
    directory = variant_repo / "minilm" / "1"
    manifest = Manifest.read(directory)
    texts = [LONG_TEXT, *SENTENCES]
    eager = eager_artifact(directory)
    want = embeddings(eager, directory, texts)
    got = embeddings(load_compiled(directory / "model.bf16.cpu.aoti.pt2"), directory, texts)
    cosine = (want * got).sum(1) / np.linalg.norm(got, axis=1)
    bound = manifest.precision.min_agreement
    assert cosine.min() >= bound, f"worst: {texts[int(cosine.argmin())][:60]!r} {cosine.min()}"
    variant = next(v for v in manifest.compiled if v.precision == "bf16")
    assert bound <= variant.agreement < 1.0  # measured, not copied from fp32


def test_compiled_digits_classify_as_the_eager_artifact(variant_repo: Path) -> None:
    directory = variant_repo / "digits" / "1"
    images, _ = held_out()
    inputs = torch.from_numpy(images).float().reshape(-1, 1, 8, 8)
    eager = eager_artifact(directory)
    with torch.inference_mode():
        want = eager(inputs)
        got = load_compiled(directory / "model.fp32.cpu.aoti.pt2")(inputs)
        reduced = load_compiled(directory / "model.bf16.cpu.aoti.pt2")(inputs.bfloat16())
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    agreement = float((reduced.float().argmax(1) == want.argmax(1)).double().mean())
    assert agreement >= 0.99


def test_the_manifest_pins_each_variant_and_what_it_needs(variant_repo: Path) -> None:
    manifest = Manifest.read(variant_repo / "minilm" / "1")
    assert [v.precision for v in manifest.compiled] == ["fp32", "bf16"]
    for variant in manifest.compiled:
        assert variant.file in manifest.files  # its sha256, checked at every load
        assert variant.torch_version == torch.__version__
        assert variant.cpu_features  # what its kernels need from the CPU


async def test_a_vouched_server_serves_the_compiled_variant_with_the_same_answers(
    variant_repo: Path, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    digests = tmp_path / "digests.txt"
    digests.write_text("\n".join(digest_lines(variant_repo)) + "\n")
    answers = {}
    for runtime in ("compiled", "eager"):
        settings = make_settings(
            model_repository=variant_repo,
            models=["minilm"],
            precision="fp32",
            runtime=runtime,
            model_trust="digest-pinned",
            model_digests_file=digests,
        )
        served, answers[runtime] = await served_embeddings(settings, SENTENCES[:8])
        assert served == runtime
    np.testing.assert_allclose(answers["compiled"], answers["eager"], atol=1e-4)


async def test_an_unvouched_server_serves_eagerly(
    variant_repo: Path, make_settings: SettingsFactory
) -> None:
    settings = make_settings(model_repository=variant_repo, runtime="compiled")
    async with serve(settings) as http:
        listed = (await http.get("/v1/models")).json()["models"][0]["versions"][0]
        assert listed["runtime"] == "eager"
        response = await http.post("/v1/models/digits:predict", json={"instances": [ZEROS]})
        assert response.status_code == 200


def test_native_code_needs_the_version_vouched_for(variant_repo: Path) -> None:
    model = load_version(variant_repo / "digits" / "1", "compiled", may_run_code=False)
    assert model.runtime.runtime == "eager"
    assert "nothing vouches for this version" in model.runtime.reason


@pytest.mark.parametrize(
    ("runtime", "file"), [("compiled", "model.fp32.cpu.aoti.pt2"), ("onnx", "model.fp32.onnx")]
)
def test_a_variant_that_fails_to_load_leaves_the_version_eager(
    variant_repo: Path, tmp_path: Path, runtime: RuntimeSetting, file: str
) -> None:
    directory = tmp_path / "digits"
    shutil.copytree(variant_repo / "digits" / "1", directory)
    (directory / file).write_bytes(b"not a variant")
    model = load_version(directory, runtime)
    assert model.runtime.runtime == "eager"
    assert f"the {runtime} variant failed to load" in model.runtime.reason
    assert len(model.forward([np.zeros((8, 8), dtype=np.float32)] * 2)) == 2


def test_auto_times_both_runtimes_and_says_which_won(variant_repo: Path) -> None:
    model = load_version(variant_repo / "digits" / "1", "auto", precision="bf16")
    assert model.runtime.runtime in ("eager", "compiled")
    assert "RUNTIME=auto" in model.runtime.reason
    assert "compiled" in model.runtime.reason and "eager" in model.runtime.reason
