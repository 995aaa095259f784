"""SHADOW_CPUS: the split between the CPUs kept for shadows and the ones the workers serve on."""

from __future__ import annotations

import pytest

from service.config import ConfigError, load_settings
from service.rollouts.shadow_cpus import split_cpus

pytestmark = pytest.mark.unit


def test_the_highest_numbered_cpus_go_to_the_shadows() -> None:
    assert split_cpus(frozenset({0, 1, 2, 3}), 1) == ({0, 1, 2}, {3})
    # A container's cpuset need not start at 0 nor be contiguous.
    assert split_cpus(frozenset({4, 9, 6, 5}), 2) == ({4, 5}, {6, 9})
    assert split_cpus(frozenset({0, 1}), 0) == ({0, 1}, set())


def test_at_least_one_cpu_is_left_to_serve() -> None:
    with pytest.raises(ValueError, match=r"SHADOW_CPUS=2 takes every CPU .*\[0, 1\]"):
        split_cpus(frozenset({0, 1}), 2)
    with pytest.raises(ConfigError, match="SHADOW_CPUS"):
        load_settings(shadow_cpus=-1)


def test_the_default_workers_and_threads_count_the_serving_cpus_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("service.config.available_cpus", lambda: 8)
    settings = load_settings(shadow_cpus=2, device="cpu")
    assert settings.serving_cpus() == 6
    assert settings.effective_workers() == 4  # MAX_AUTO_WORKERS
    assert settings.effective_torch_threads() == 1
    assert load_settings(device="cpu", workers=2).effective_torch_threads() == 4
