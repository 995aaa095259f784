"""InferenceService, driven without HTTP: real model, real Redis, the batcher on its thread."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from service.app import instance_cache_key
from service.runtime.device import PrecisionChoice
from service.runtime.executor import TorchThread
from service.runtime.inference import InferenceService
from service.runtime.loading import load_model
from service.runtime.manifest import Manifest
from service.runtime.model import BatchPolicy, LoadedModel
from service.storage.cache import RedisCache
from tests.conftest import SettingsFactory
from tests.digits_data import held_out

pytestmark = pytest.mark.integration


def _two_different_digits() -> tuple[list[np.ndarray], list[int]]:
    images, labels = held_out()
    second = next(i for i, label in enumerate(labels) if label != labels[0])
    chosen = [0, second]
    return [images[i].reshape(8, 8).astype(np.float32) for i in chosen], [
        int(labels[i]) for i in chosen
    ]


async def _never() -> bool:
    return False


@pytest.fixture
async def digits(model_repo: Path) -> AsyncIterator[LoadedModel]:
    directory = model_repo / "digits" / "1"
    manifest = Manifest.read(directory)
    thread = TorchThread(threads=1)
    model = await thread.run(
        load_model,
        manifest=manifest,
        artifact=directory / manifest.artifact,
        device=torch.device("cpu"),
        precision=PrecisionChoice("fp32", "test"),
        torch_thread=thread,
        policy=BatchPolicy(enabled=True, max_batch_size=8, max_delay_s=0, max_queue_items=64),
    )
    model.batcher.start()
    try:
        yield model
    finally:
        await model.batcher.stop()
        thread.shutdown()


async def test_a_second_prediction_comes_from_the_cache_and_no_cache_recomputes(
    digits: LoadedModel, redis_url: str, make_settings: SettingsFactory
) -> None:
    cache = RedisCache(redis_url, timeout_s=1.0)
    service = InferenceService(make_settings(), cache, key_for=instance_cache_key)
    items, truth = _two_different_digits()
    try:
        outcomes = []
        for use_cache in (True, True, False):
            outcomes.append(
                await service.predict(
                    digits,
                    items,
                    deadline=time.monotonic() + 10,
                    use_cache=use_cache,
                    is_abandoned=_never,
                )
            )
    finally:
        await cache.close()
    first, second, bypass = outcomes
    assert [o.cache_result for o in outcomes] == ["miss", "hit", "bypass"]
    assert first.batched is not None and first.batched.batch_size == 2
    assert second.batched is None  # nothing reached the batcher
    assert bypass.batched is not None
    for outcome in outcomes:
        answers = digits.handler.predictions_to_json(outcome.predictions)
        assert [a["label"] for a in answers] == truth  # in the order of the items
        np.testing.assert_allclose(
            [a["probabilities"] for a in answers],
            [a["probabilities"] for a in digits.handler.predictions_to_json(first.predictions)],
            rtol=1e-6,
        )
