"""examples/custom-handler: a handler registered by entry point, packaged, served and cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.cli import main
from service.runtime.handlers import registered_handlers, resolve_handler
from service.runtime.manifest import Manifest
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-handler"
RECORDS = [
    {"age": 23, "income": 18000, "debt_ratio": 0.71},
    {"age": 55, "income": 91000.5, "debt_ratio": 0.12},
    {"age": 38, "income": 47000, "debt_ratio": 0.4},
]


def _expected_risks() -> list[float]:
    from torchdock_example_tabular.model import make

    pre = json.loads((EXAMPLE / "preprocessing.json").read_text())
    rows = np.array([[r[f] for f in pre["fields"]] for r in RECORDS], dtype=np.float32)
    standardised = (rows - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    with torch.inference_mode():
        return torch.sigmoid(make()(torch.from_numpy(standardised))).tolist()


def _package(repo: Path, handler: str) -> Manifest:
    args = ["package", "--output", str(repo), "--name", "risk",
            "--module", f"{EXAMPLE / 'torchdock_example_tabular' / 'model.py'}:make",
            "--example-input", "float32:2x3", "--output-name", "risk",
            "--task", "tabular-risk", "--handler", handler,
            "--preprocessing", str(EXAMPLE / "preprocessing.json")]  # fmt: skip
    assert main(args) == 0
    return Manifest.read(repo / "risk" / "1")


def test_the_example_registers_by_entry_point() -> None:
    from torchdock_example_tabular.handler import TabularRiskHandler

    assert "tabular-risk" in registered_handlers()
    assert resolve_handler("tabular-risk") is TabularRiskHandler
    assert resolve_handler("torchdock_example_tabular.handler:TabularRiskHandler") is (
        TabularRiskHandler
    )


async def test_records_in_risks_out_and_cached(
    tmp_path: Path, make_settings: SettingsFactory, redis_url: str
) -> None:
    manifest = _package(tmp_path / "repo", "tabular-risk")
    assert manifest.handler == "tabular-risk"
    expected = _expected_risks()
    settings = make_settings(
        model_repository=tmp_path / "repo", models=["risk"], precision="fp32", redis_url=redis_url
    )
    async with serve(settings) as c:
        first = await c.post("/v1/models/risk:predict", json={"instances": RECORDS})
        assert first.status_code == 200, first.text
        assert first.headers["X-Cache"] == "miss"
        risks = [p["risk"] for p in first.json()["predictions"]]
        assert np.abs(np.array(risks) - expected).max() < 1e-5
        decisions = [p["decision"] for p in first.json()["predictions"]]
        assert decisions == ["refer" if r >= 0.5 else "approve" for r in expected]
        again = await c.post("/v1/models/risk:predict", json={"instances": RECORDS})
        assert again.headers["X-Cache"] == "hit"
        assert again.json()["predictions"] == first.json()["predictions"]

        bad = await c.post("/v1/models/risk:predict", json={"instances": [{"age": 3}]})
        assert bad.status_code == 422
        assert "expected an object with ['age', 'income', 'debt_ratio']" in bad.json()["detail"]
        text = await c.post(
            "/v1/models/risk:predict",
            json={"instances": [{"age": "old", "income": 1, "debt_ratio": 0}]},
        )
        assert text.status_code == 422


def test_a_handler_that_cannot_serve_the_model_is_refused_at_package_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["package", "--output", str(tmp_path), "--name", "risk",
            "--module", f"{EXAMPLE / 'torchdock_example_tabular' / 'model.py'}:make",
            "--example-input", "float32:2x3", "--handler", "tabular-risk"]  # fmt: skip
    assert main(args) == 2  # no --preprocessing: the handler has no fields to read
    assert "handler 'tabular-risk' cannot serve this model" in capsys.readouterr().err
