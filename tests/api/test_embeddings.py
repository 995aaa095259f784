"""minilm through V1 and V2: embeddings, truncation reported, bad texts refused."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration


async def test_v1_embeddings(client: httpx.AsyncClient) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "The cat sits outside."]
    r = await client.post("/v1/models/minilm:predict", json={"instances": texts})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"
    predictions = r.json()["predictions"]
    vectors = np.array([p["embedding"] for p in predictions])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert [p["truncated"] for p in predictions] == [False] * 3
    assert predictions[2]["tokens"] == 7  # [CLS] the cat sits outside . [SEP]


async def test_v2_bytes_tensor(client: httpx.AsyncClient) -> None:
    body = {
        "inputs": [
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello world", "hi"]}
        ],
    }
    r = await client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["embedding"]["datatype"] == "FP32"
    assert outputs["embedding"]["shape"] == [2, 384]
    assert len(outputs["embedding"]["data"]) == 768
    assert outputs["truncated"] == {
        "name": "truncated",
        "datatype": "BOOL",
        "shape": [2],
        "data": [False, False],
    }


async def test_long_text_is_truncated_and_says_so(client: httpx.AsyncClient) -> None:
    long_text = " ".join(["word"] * 400)
    r = await client.post("/v1/models/minilm:predict", json={"instances": [long_text, "short"]})
    assert r.status_code == 200
    first, second = r.json()["predictions"]
    assert first["truncated"] is True
    assert first["tokens"] == 256
    assert second["truncated"] is False


@pytest.mark.parametrize("bad", ["", "   ", 42, None, ["nested"], {"text": "x"}])
async def test_bad_texts_are_refused(client: httpx.AsyncClient, bad: object) -> None:
    r = await client.post("/v1/models/minilm:predict", json={"instances": ["fine", bad]})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "instance 1" in r.json()["detail"]


async def test_v2_non_string_bytes_refused(client: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}
    r = await client.post("/v2/models/minilm/infer", json=body)
    assert r.status_code == 422
    empty = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [""]}]}
    r = await client.post("/v2/models/minilm/infer", json=empty)
    assert r.status_code == 422
    assert "empty" in r.json()["detail"]


async def test_a_request_over_the_token_budget_is_413_on_both_protocols(
    client: httpx.AsyncClient,
) -> None:
    # 33 texts of 300 words: over 32 x 256 tokens, while each is far under the character limit.
    texts = [f"{i} " + "word " * 300 for i in range(33)]
    v2 = {"inputs": [{"name": "text", "shape": [33], "datatype": "BYTES", "data": texts}]}
    for path, body in (
        ("/v1/models/minilm:predict", {"instances": texts}),
        ("/v2/models/minilm/infer", v2),
    ):
        r = await client.post(path, json=body)
        assert r.status_code == 413, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert "8448 tokens, more than this model's budget of 8192" in r.json()["detail"]
    fits = await client.post("/v1/models/minilm:predict", json={"instances": texts[:32]})
    assert fits.status_code == 200
