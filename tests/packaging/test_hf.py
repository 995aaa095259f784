"""`--hf`: a local Hugging Face BERT classifier (tiny random config), served like transformers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli import main
from service.runtime.manifest import Manifest
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration

transformers = pytest.importorskip("transformers")

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
WORDS = [
    "the", "a", "movie", "film", "was", "is", "good", "bad", "great", "awful", "fine", "plot",
    "actors", "boring", "fun",
]  # fmt: skip
TEXTS = ["the movie was good", "a boring film", "great actors fun plot", "awful", "fine"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `save_pretrained` writes for a classifier, with a WordPiece tokenizer.json."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(directory)
    config = transformers.BertConfig(
        vocab_size=5 + len(WORDS),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).eval().save_pretrained(directory)
    return directory


def _reference(hf_dir: Path, texts: list[str]) -> np.ndarray:
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.BertForSequenceClassification.from_pretrained(hf_dir).eval()
    with torch.inference_mode():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    return torch.softmax(logits, dim=1).numpy()


async def test_a_text_classifier_is_served_like_transformers(
    hf_dir: Path, tmp_path: Path, make_settings: SettingsFactory
) -> None:
    repo = tmp_path / "repo"
    args = ["package", "--output", str(repo), "--name", "sentiment", "--hf", str(hf_dir),
            "--task", "text-classification"]  # fmt: skip
    assert main(args) == 0
    manifest = Manifest.read(repo / "sentiment" / "1")
    assert manifest.task == "text-classification"
    assert manifest.labels == ["negative", "neutral", "positive"]
    assert manifest.precision.agreement_metric == "top-1 agreement with fp32"
    assert "model.safetensors" not in manifest.files  # the weights live in the graph
    expected = _reference(hf_dir, TEXTS)

    settings = make_settings(model_repository=repo, models=["sentiment"], precision="fp32")
    async with serve(settings) as c:
        r = await c.post("/v1/models/sentiment:predict", json={"instances": TEXTS})
        assert r.status_code == 200, r.text
        predictions = r.json()["predictions"]
        served = np.array([p["probabilities"] for p in predictions])
        difference = float(np.abs(served - expected).max())
        print(f"text-classification V1: max abs diff to transformers {difference:.3g}")
        assert difference < 1e-5
        assert [p["label_name"] for p in predictions] == [
            LABELS[int(i)] for i in expected.argmax(1)
        ]
        for prediction, row in zip(predictions, expected, strict=True):
            top = prediction["top_k"]  # all three classes, best first
            assert [t["label"] for t in top] == list(np.argsort(-row, kind="stable"))
            assert abs(top[0]["score"] - row.max()) < 1e-5
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [5], "data": TEXTS}]}
        r = await c.post("/v2/models/sentiment/infer", json=body)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert outputs["label"]["data"] == expected.argmax(1).tolist()
        assert outputs["probabilities"]["shape"] == [5, 3]


def test_hf_refuses_what_it_cannot_serve(
    hf_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def refusal(directory: Path, task: str) -> str:
        args = ["package", "--output", str(tmp_path / "repo"), "--name", "m",
                "--hf", str(directory), "--task", task]  # fmt: skip
        assert main(args) == 2
        return capsys.readouterr().err

    assert "--hf takes --task text-embedding or text-classification" in refusal(hf_dir, "tensor")
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    for name in ("model.safetensors", "tokenizer.json"):
        (roberta / name).write_bytes((hf_dir / name).read_bytes())
    config = json.loads((hf_dir / "config.json").read_text())
    (roberta / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    assert "only BERT-family encoders" in refusal(roberta, "text-classification")
    (roberta / "model.safetensors").unlink()
    assert "model.safetensors is missing" in refusal(roberta, "text-classification")
