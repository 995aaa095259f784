"""The load tests' profiles, gates and payloads (loadtests/), without running Locust: importing
it would monkey-patch this process with gevent."""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass

import pytest
import yaml

from loadtests import payloads
from loadtests.profiles import Gates, evaluate, load_objectives, load_profiles
from tests.paths import ROOT

pytestmark = pytest.mark.deploy

RULES = ROOT / "monitoring" / "prometheus" / "rules"


def locustfile_user_classes() -> set[str]:
    tree = ast.parse((ROOT / "loadtests" / "locustfile.py").read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name.endswith("User")
    }


def test_every_profile_is_well_formed_and_names_real_user_classes() -> None:
    profiles = load_profiles()
    assert {"smoke", "steady", "stress", "soak", "overload"} <= profiles.keys()
    users = locustfile_user_classes()
    for profile in profiles.values():
        assert set(profile.user_classes) <= users, profile.name
        assert profile.stages and profile.duration_s > 0
        assert profile.gates.max_failure_ratio is not None, f"{profile.name} has no failure gate"
    assert profiles["smoke"].duration_s == 20


def test_the_objectives_are_the_ones_the_alert_rules_use() -> None:
    """Prometheus cannot read slo.toml: its rules repeat the numbers, and must agree."""
    objectives = load_objectives()
    recorded = {}
    for group in yaml.safe_load((RULES / "recording.yml").read_text())["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "model:torchdock_latency_slo_p99:seconds":
                seconds = float(rule["expr"].removeprefix("vector(").removesuffix(")"))
                recorded[rule["labels"]["model_name"]] = seconds * 1000
    assert recorded == objectives.latency_p99_ms
    alerts = (RULES / "alerts.yml").read_text()
    assert f"14.4 * {1 - objectives.availability:.3f}" in alerts


def test_budget_gates_derive_from_the_availability_objective() -> None:
    profiles = load_profiles()
    budget = round(1 - load_objectives().availability, 6)
    assert profiles["steady"].gates.max_failure_ratio == budget
    assert profiles["steady"].gates.model_p99_ms == load_objectives().latency_p99_ms
    assert profiles["smoke"].gates.max_failure_ratio == 0


@dataclass
class Measured:
    """What a finished run measured for one request name: the input of the gates."""

    name: str
    num_requests: int
    fail_ratio: float
    p95: float
    p99: float

    def get_response_time_percentile(self, percent: float) -> float:
        return self.p95 if percent == 0.95 else self.p99


def test_gates_pass_within_limits_and_fail_past_them() -> None:
    gates = Gates(max_failure_ratio=0.01, p99_ms=500, model_p99_ms={"digits": 250})
    digits = Measured("digits v1 predict", 100, 0.0, 100, 240)
    slow_digits = Measured("digits v1 predict", 100, 0.0, 100, 260)
    total = Measured("Aggregated", 100, 0.005, 120, 400)

    assert all(v.passed for v in evaluate(gates, total, [digits]))
    failed = [v.gate for v in evaluate(gates, total, [slow_digits]) if not v.passed]
    assert failed == ["digits v1 predict p99 ms"]
    too_many_errors = Measured("Aggregated", 100, 0.02, 120, 400)
    assert [v.gate for v in evaluate(gates, too_many_errors, []) if not v.passed] == [
        "failure ratio"
    ]


def test_a_run_without_requests_fails() -> None:
    verdicts = evaluate(Gates(max_failure_ratio=0.0), Measured("Aggregated", 0, 0.0, 0, 0), [])
    assert [v.gate for v in verdicts if not v.passed] == ["requests"]


def test_validators_accept_right_bodies_and_name_what_is_wrong() -> None:
    probabilities = [0.0] * 9 + [1.0]
    good = {"predictions": [{"label": 9, "probabilities": probabilities}]}
    assert payloads.check_digits_v1(good, 1) is None
    assert payloads.check_digits_v1(good, 2) == "expected 2 predictions"
    assert "not a digit" in str(
        payloads.check_digits_v1(
            {"predictions": [{"label": 10, "probabilities": probabilities}]}, 1
        )
    )
    assert "do not match" in str(
        payloads.check_digits_v1({"predictions": [{"label": 3, "probabilities": probabilities}]}, 1)
    )

    v2 = {"outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [9]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 10], "data": probabilities},
    ]}  # fmt: skip
    assert payloads.check_digits_v2(v2, 1) is None
    assert payloads.check_digits_v2(v2, 2) is not None
    assert payloads.check_digits_v2({"outputs": []}, 1) is not None

    unit = [1.0] + [0.0] * 383
    embedding = {"predictions": [{"embedding": unit, "tokens": 5, "truncated": False}]}
    assert payloads.check_embeddings(embedding, 1) is None
    assert "norm" in str(
        payloads.check_embeddings(
            {"predictions": [{"embedding": [2.0] + [0.0] * 383, "truncated": False}]}, 1
        )
    )
    assert "384" in str(
        payloads.check_embeddings({"predictions": [{"embedding": [1.0], "truncated": False}]}, 1)
    )
    assert "truncated" in str(payloads.check_embeddings({"predictions": [{"embedding": unit}]}, 1))
    assert payloads.check_embeddings({"detail": "no"}, 1) is not None


def test_the_zipf_pool_repeats_inputs_at_about_the_asked_hit_ratio() -> None:
    for asked in (0.0, 0.5, 0.9):
        pool = payloads.ZipfPool(random.Random(1), hit_ratio=asked)
        seen: set[tuple[int, ...]] = set()
        repeats = 0
        draws = 20_000
        for _ in range(draws):
            key = tuple(pool.draw())
            repeats += key in seen
            seen.add(key)
        # Only the first draw of each of the 128 pooled inputs misses.
        assert abs(repeats / draws - asked) < 0.02, (asked, repeats / draws)


def test_texts_have_the_spread_of_lengths_of_real_traffic() -> None:
    rng, corpus = random.Random(3), payloads.sentences()
    lengths = [len(payloads.text(rng, corpus).split()) for _ in range(2000)]
    assert len(corpus) >= 40
    assert min(lengths) < 15 and max(lengths) > 256  # some truncated at 256 tokens
    assert sorted(lengths)[len(lengths) // 2] < 20  # most are a sentence
