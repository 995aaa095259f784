"""RUNTIME=auto decided once per server: the first worker to load a version times the runtimes
and records the winner; its siblings serve that one."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from service.runtime.compiled import Runtime, RuntimeChoice
from service.runtime.shared_choice import SharedChoice, SharedRuntimeChoices, choice_key
from tests.packaging.variants import load_version
from tests.sentences import SENTENCES
from tests.system.server import ServerProcess


@pytest.mark.unit
def test_a_choice_is_read_back_by_key_and_a_foreign_file_is_no_choice(tmp_path: Path) -> None:
    choices = SharedRuntimeChoices(tmp_path)
    with choices.decide("k") as recorded:
        assert recorded is None
        choices.record("k", RuntimeChoice("onnx", "RUNTIME=auto, the fastest here"))
    with choices.decide("k") as recorded:
        assert recorded == RuntimeChoice("onnx", "RUNTIME=auto, the fastest here")
    with choices.decide("other") as recorded:
        assert recorded is None
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "odd.json").write_text(json.dumps({"runtime": "tensorrt", "reason": "?"}))
    for key in ("bad", "odd"):
        with choices.decide(key) as recorded:
            assert recorded is None


@pytest.mark.unit
def test_the_key_changes_with_the_manifest_and_the_precision() -> None:
    key = choice_key("minilm", 1, "abc", "fp32")
    assert key == choice_key("minilm", 1, "abc", "fp32")
    others = {
        choice_key("minilm", 2, "abc", "fp32"),
        choice_key("minilm", 1, "abd", "fp32"),
        choice_key("minilm", 1, "abc", "bf16"),
        choice_key("digits", 1, "abc", "fp32"),
    }
    assert key not in others and len(others) == 4


@pytest.mark.unit
def test_a_sibling_waits_while_the_first_worker_decides(tmp_path: Path) -> None:
    choices = SharedRuntimeChoices(tmp_path)
    seen: list[RuntimeChoice | None] = []
    deciding = threading.Event()

    def sibling() -> None:
        deciding.wait()
        with choices.decide("k") as recorded:
            seen.append(recorded)

    thread = threading.Thread(target=sibling)
    thread.start()
    with choices.decide("k"):
        deciding.set()
        time.sleep(0.3)  # the sibling is blocked on the lock meanwhile
        assert seen == []
        choices.record("k", RuntimeChoice("compiled", "RUNTIME=auto, the fastest here"))
    thread.join(timeout=10)
    assert seen == [RuntimeChoice("compiled", "RUNTIME=auto, the fastest here")]


@pytest.mark.integration
def test_the_second_worker_serves_the_first_workers_choice(
    variant_repo: Path, tmp_path: Path
) -> None:
    shared = SharedChoice(SharedRuntimeChoices(tmp_path), "minilm-1")
    first = load_version(variant_repo / "minilm" / "1", "auto", shared_choice=shared)
    assert "timed by a sibling worker" not in first.runtime.reason
    second = load_version(variant_repo / "minilm" / "1", "auto", shared_choice=shared)
    assert second.runtime.runtime == first.runtime.runtime
    assert second.runtime.reason == f"{first.runtime.reason}, timed by a sibling worker"
    assert len(second.forward(SENTENCES[:3])) == 3


@pytest.mark.integration
@pytest.mark.parametrize("runtime", ["onnx", "compiled", "eager"])
def test_a_recorded_choice_is_served_as_recorded(
    variant_repo: Path, tmp_path: Path, runtime: Runtime
) -> None:
    choices = SharedRuntimeChoices(tmp_path)
    choices.record("k", RuntimeChoice(runtime, "RUNTIME=auto, the fastest here (recorded)"))
    model = load_version(
        variant_repo / "digits" / "1", "auto", shared_choice=SharedChoice(choices, "k")
    )
    assert model.runtime.runtime == runtime
    assert (
        model.runtime.reason
        == "RUNTIME=auto, the fastest here (recorded), timed by a sibling worker"
    )


@pytest.mark.integration
def test_a_recorded_variant_that_fails_here_leaves_the_version_eager(
    variant_repo: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "digits"
    shutil.copytree(variant_repo / "digits" / "1", directory)
    (directory / "model.fp32.onnx").write_bytes(b"not a variant")
    choices = SharedRuntimeChoices(tmp_path)
    choices.record("k", RuntimeChoice("onnx", "RUNTIME=auto, the fastest here"))
    model = load_version(directory, "auto", shared_choice=SharedChoice(choices, "k"))
    assert model.runtime.runtime == "eager"
    assert "the onnx variant failed to load" in model.runtime.reason


@pytest.mark.system
def test_the_workers_of_one_server_serve_one_runtime(variant_repo: Path, tmp_path: Path) -> None:
    env = {
        "MODEL_REPOSITORY": str(variant_repo),
        "MODELS": '["minilm"]',
        "DEVICE": "cpu",
        "PRECISION": "fp32",
        "RUNTIME": "auto",
        "LOG_FORMAT": "json",
    }
    with ServerProcess(env=env, workers=2, log_path=tmp_path / "server.log") as server:
        lines = [
            json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")
        ]
    loaded = [line for line in lines if line.get("message") == "loaded model"]
    assert len({line["process"] for line in loaded}) == 2, loaded
    assert len({line["runtime"] for line in loaded}) == 1, loaded
    reasons = sorted(line["runtime_reason"] for line in loaded)
    assert reasons[1] == f"{reasons[0]}, timed by a sibling worker"
