"""Request bodies for the load tests, and the checks that their responses are right.

A validator returns None for a correct body, else what is wrong with it: a 200 with a wrong body
is a failure like any other.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).with_name("corpus.txt")
EMBEDDING_DIMENSIONS = 384
DIGIT_PIXELS = 64
DIGIT_CLASSES = 10


def digit(rng: random.Random) -> list[int]:
    """An 8x8 image of integer intensities 0-16, flat, as scikit-learn's digits are."""
    return [rng.randint(0, 16) for _ in range(DIGIT_PIXELS)]


def sentences() -> list[str]:
    return [line.strip() for line in CORPUS.read_text().splitlines() if line.strip()]


def text(rng: random.Random, corpus: Sequence[str]) -> str:
    """Mostly one sentence, sometimes a few, rarely a paragraph long enough to be truncated:
    the spread of lengths that a sentence-embedding service sees."""
    roll = rng.random()
    count = 1 if roll < 0.7 else rng.randint(2, 3) if roll < 0.97 else rng.randint(20, 30)
    return " ".join(rng.choices(corpus, k=count))


class ZipfPool:
    """Inputs that repeat with a Zipf law over a fixed pool, mixed with never-seen ones, so that
    a cache in front of the model hits about `hit_ratio` of the time once the pool is warm."""

    def __init__(
        self, rng: random.Random, *, size: int = 128, exponent: float = 1.1, hit_ratio: float = 0.8
    ) -> None:
        if not 0 <= hit_ratio <= 1:
            raise ValueError("hit_ratio must be within [0, 1]")
        self.rng = rng
        self.hit_ratio = hit_ratio
        self.pool = [digit(rng) for _ in range(size)]
        self.cumulative = list(
            itertools.accumulate(1 / rank**exponent for rank in range(1, size + 1))
        )

    def draw(self) -> list[int]:
        if self.rng.random() >= self.hit_ratio:
            return digit(self.rng)
        point = self.rng.random() * self.cumulative[-1]
        return self.pool[bisect.bisect_left(self.cumulative, point)]


def check_digits_v1(body: Any, count: int) -> str | None:
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != count:
        return f"expected {count} predictions"
    for prediction in predictions:
        label = prediction.get("label")
        probabilities = prediction.get("probabilities")
        if not isinstance(label, int) or not 0 <= label < DIGIT_CLASSES:
            return f"label {label!r} is not a digit"
        if not isinstance(probabilities, list) or len(probabilities) != DIGIT_CLASSES:
            return "expected 10 probabilities"
        if abs(sum(probabilities) - 1) > 1e-3 or probabilities[label] != max(probabilities):
            return "probabilities do not sum to 1 or do not match the label"
    return None


def check_digits_v2(body: Any, count: int) -> str | None:
    outputs = {o.get("name"): o for o in body.get("outputs", [])} if isinstance(body, dict) else {}
    label = outputs.get("label")
    if label is None or label.get("shape") != [count] or label.get("datatype") != "INT64":
        return f"expected an INT64 label tensor of shape [{count}]"
    if not all(isinstance(v, int) and 0 <= v < DIGIT_CLASSES for v in label.get("data", [])):
        return "a label is not a digit"
    probabilities = outputs.get("probabilities")
    if probabilities is None or probabilities.get("shape") != [count, DIGIT_CLASSES]:
        return f"expected probabilities of shape [{count}, 10]"
    return None


def check_embeddings(body: Any, count: int) -> str | None:
    predictions = body.get("predictions") if isinstance(body, dict) else None
    if not isinstance(predictions, list) or len(predictions) != count:
        return f"expected {count} predictions"
    for prediction in predictions:
        vector = prediction.get("embedding")
        if not isinstance(vector, list) or len(vector) != EMBEDDING_DIMENSIONS:
            return f"expected a {EMBEDDING_DIMENSIONS}-dimensional embedding"
        norm = math.sqrt(sum(v * v for v in vector))
        if abs(norm - 1) > 1e-3:
            return f"embedding norm {norm:.5f}, expected 1 (L2-normalised)"
        if not isinstance(prediction.get("truncated"), bool):
            return "missing the truncated flag"
    return None
