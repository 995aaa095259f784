"""A standard Open Inference Protocol client (NVIDIA's tritonclient) works unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.digits_data import held_out
from tests.system.server import ServerProcess

pytestmark = pytest.mark.system

httpclient = pytest.importorskip("tritonclient.http")


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    logs = tmp_path_factory.mktemp("v2-client")
    with ServerProcess(
        env={"MODEL_REPOSITORY": str(model_repo), "DEVICE": "cpu"},
        workers=1,
        log_path=logs / "server.log",
    ) as process:
        yield process


def test_health_and_metadata(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    assert client.is_model_ready("digits", model_version="1")
    metadata = client.get_model_metadata("digits")
    assert metadata["name"] == "digits"
    assert metadata["inputs"][0]["name"] == "pixels"
    assert client.get_server_metadata()["name"] == "torchdock"


def test_infer_digits(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    images, labels = held_out()
    pixels = httpclient.InferInput("pixels", [16, 8, 8], "FP32")
    pixels.set_data_from_numpy(images[:16].astype(np.float32), binary_data=False)
    wanted = [httpclient.InferRequestedOutput("label", binary_data=False)]
    result = client.infer("digits", [pixels], outputs=wanted, request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    predicted = result.as_numpy("label")
    assert predicted is not None
    assert predicted.dtype == np.int64
    assert (predicted == labels[:16]).mean() >= 0.9
    assert result.as_numpy("probabilities") is None  # not requested


def test_infer_minilm_bytes(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    text = httpclient.InferInput("text", [2], "BYTES")
    text.set_data_from_numpy(
        np.array([b"How do I reset my password?", b"I forgot my password"], dtype=object),
        binary_data=False,
    )
    result = client.infer(
        "minilm", [text], outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)]
    )
    embedding = result.as_numpy("embedding")
    assert embedding is not None
    assert embedding.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-3)
    assert float(embedding[0] @ embedding[1]) > 0.5


def test_errors_surface_as_client_exceptions(server: ServerProcess) -> None:
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    pixels = httpclient.InferInput("pixels", [1, 8, 8], "FP32")
    pixels.set_data_from_numpy(np.full((1, 8, 8), np.nan, dtype=np.float32), binary_data=False)
    with pytest.raises(InferenceServerException, match="NaN and Infinity are not JSON"):
        client.infer("digits", [pixels])
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_metadata("absent")


def test_binary_extension_is_refused_clearly(server: ServerProcess) -> None:
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    pixels = httpclient.InferInput("pixels", [1, 8, 8], "FP32")
    pixels.set_data_from_numpy(np.zeros((1, 8, 8), dtype=np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match="binary tensor data extension"):
        client.infer("digits", [pixels])
