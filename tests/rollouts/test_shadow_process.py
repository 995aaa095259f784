"""The shadow process, for real: another process at the lowest priority, which predicts what
the worker's own copy predicts, loads a version again when its manifest changes, reports a
version that fails, and is started again after it died."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from service.rollouts.shadow_process import (
    ShadowPredictionFailed,
    ShadowProcess,
    ShadowProcessFailed,
)
from service.runtime.device import resolve_device
from service.runtime.executor import TorchThread
from service.runtime.registry import ModelRegistry
from service.runtime.repository import VersionRef
from tests.conftest import SettingsFactory
from tests.rollouts.versions import OtherClassifier, copy_version, package_classifier

pytestmark = pytest.mark.integration


@pytest.fixture
def shadow(make_settings: SettingsFactory, repo_copy: Path) -> Iterator[ShadowProcess]:
    process = ShadowProcess(make_settings(model_repository=repo_copy))
    yield process
    process.stop()


def instances(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((8, 8)) * 16).round(2) for _ in range(count)]


def own_predictions(settings_repo: Path, make_settings: SettingsFactory, version: int) -> list[Any]:
    """What the worker's own copy of the version predicts for `instances(8)`."""

    async def predict() -> list[Any]:
        torch_thread = TorchThread(threads=1)
        try:
            registry = ModelRegistry(
                make_settings(model_repository=settings_repo), torch_thread, resolve_device("cpu")
            )
            state = await registry.load_version(
                VersionRef("digits", version, settings_repo / "digits" / str(version)), None
            )
            assert state.model is not None
            return await torch_thread.run(state.model.forward, instances(8))
        finally:
            torch_thread.shutdown()

    return asyncio.run(predict())


def test_it_predicts_in_another_process_at_the_lowest_priority(
    shadow: ShadowProcess, repo_copy: Path, make_settings: SettingsFactory
) -> None:
    ref = VersionRef("digits", 1, repo_copy / "digits" / "1")
    predictions = shadow.predict(ref, "digest-1", instances(8))
    pid = shadow.pid
    assert pid is not None and pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    assert os.sched_getscheduler(pid) == os.SCHED_IDLE
    expected = own_predictions(repo_copy, make_settings, 1)
    assert [p.label for p in predictions] == [p.label for p in expected]
    np.testing.assert_allclose(
        [p.probabilities for p in predictions], [p.probabilities for p in expected]
    )

    # The same version rewritten in place (another manifest digest): loaded anew.
    package_classifier(repo_copy, 5, OtherClassifier(seed=7))
    shutil.rmtree(repo_copy / "digits" / "1")
    copy_version(repo_copy, 5, 1)
    rewritten = shadow.predict(ref, "digest-2", instances(8))
    assert shadow.pid == pid
    assert not np.allclose(
        [p.probabilities for p in rewritten], [p.probabilities for p in predictions]
    )


def test_it_computes_on_the_shadow_cpus_alone(
    make_settings: SettingsFactory, repo_copy: Path
) -> None:
    # The highest CPU this test may use: the workers would serve on the others.
    cpu = max(os.sched_getaffinity(0))
    shadow = ShadowProcess(make_settings(model_repository=repo_copy), cpus=frozenset({cpu}))
    try:
        shadow.predict(VersionRef("digits", 1, repo_copy / "digits" / "1"), None, instances(2))
        assert shadow.pid is not None
        threads = psutil.Process(shadow.pid).threads()
        assert len(threads) > 1  # the torch thread, at least, besides the main one
        assert {t.id: os.sched_getaffinity(t.id) for t in threads} == {t.id: {cpu} for t in threads}
    finally:
        shadow.stop()


def test_a_version_that_fails_is_reported_and_the_process_lives_on(
    shadow: ShadowProcess, repo_copy: Path
) -> None:
    missing = VersionRef("digits", 9, repo_copy / "digits" / "9")
    with pytest.raises(ShadowPredictionFailed, match="digits"):
        shadow.predict(missing, None, instances(1))
    pid = shadow.pid
    assert pid is not None
    assert len(shadow.predict(VersionRef("digits", 1, repo_copy / "digits" / "1"), None,
                              instances(2))) == 2  # fmt: skip
    assert shadow.pid == pid


def test_a_dead_process_is_started_again_and_a_stuck_one_is_stopped(
    make_settings: SettingsFactory, repo_copy: Path
) -> None:
    ref = VersionRef("digits", 1, repo_copy / "digits" / "1")
    shadow = ShadowProcess(make_settings(model_repository=repo_copy))
    try:
        shadow.predict(ref, None, instances(1))
        first = shadow.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while shadow.pid is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(shadow.predict(ref, None, instances(3))) == 3
        assert shadow.pid not in (None, first)
    finally:
        shadow.stop()
    assert shadow.pid is None

    # Importing torch and loading a version takes far longer than this: taken for stuck.
    impatient = ShadowProcess(make_settings(model_repository=repo_copy), reply_timeout_s=0.01)
    with pytest.raises(ShadowProcessFailed, match="no answer"):
        impatient.predict(ref, None, instances(1))
    assert impatient.pid is None
