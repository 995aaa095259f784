"""Loading a version as a server does, with a given runtime, and embedding texts through any
forward (the artifact, a compiled or an ONNX variant): shared by the variants' tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.config import RuntimeSetting, Settings
from service.runtime.device import PrecisionChoice
from service.runtime.executor import TorchThread
from service.runtime.handlers.text_embedding import TextEmbeddingHandler
from service.runtime.loading import load_model, load_module
from service.runtime.manifest import Manifest
from service.runtime.model import BatchPolicy, LoadedModel
from service.runtime.shared_choice import SharedChoice
from tests.conftest import serve


def eager_artifact(directory: Path) -> torch.nn.Module:
    """The version's artifact as a server loads it for eager fp32: what variants are held to."""
    fp32 = PrecisionChoice("fp32", "test")
    return load_module(directory / "model.pt2", "torch.export", torch.device("cpu"), fp32)


def embeddings(forward: Callable[..., Any], directory: Path, texts: list[str]) -> np.ndarray:
    handler = TextEmbeddingHandler(Manifest.read(directory), directory)
    prepared = handler.preprocess(texts)
    with torch.inference_mode():
        outputs = forward(*prepared.inputs)
    return np.stack([p.vector for p in handler.postprocess(outputs.float(), prepared)])


def load_version(
    directory: Path,
    runtime: RuntimeSetting,
    *,
    precision: str = "fp32",
    may_run_code: bool = True,
    shared_choice: SharedChoice | None = None,
) -> LoadedModel:
    """Load the version in `directory` on a torch thread of its own, as the registry does."""
    thread = TorchThread(threads=1)
    manifest = Manifest.read(directory)

    async def on_thread() -> LoadedModel:
        return await thread.run(
            load_model,
            manifest=manifest,
            artifact=directory / manifest.artifact,
            device=torch.device("cpu"),
            precision=PrecisionChoice(precision, "test"),  # type: ignore[arg-type]
            torch_thread=thread,
            policy=BatchPolicy(enabled=True, max_batch_size=8, max_delay_s=0, max_queue_items=8),
            runtime=runtime,
            may_run_code=may_run_code,
            shared_choice=shared_choice,
        )

    try:
        return asyncio.run(on_thread())
    finally:
        thread.shutdown()


async def served_embeddings(settings: Settings, texts: list[str]) -> tuple[str, np.ndarray]:
    """The runtime a server reports for minilm, and the embeddings it answers for `texts`."""
    async with serve(settings) as http:
        listed = (await http.get("/v1/models")).json()["models"][0]["versions"][0]
        response = await http.post("/v1/models/minilm:predict", json={"instances": texts})
        assert response.status_code == 200, response.text
    vectors = np.array([p["embedding"] for p in response.json()["predictions"]])
    return str(listed["runtime"]), vectors
