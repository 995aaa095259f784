"""How a batch of texts is cut into forward passes: the cheapest cut, within the budget."""

from __future__ import annotations

import itertools
import random

from service.runtime.handlers.text import cheapest_cuts

BUDGET, OVERHEAD = 2048, 32


def _cost(cuts: list[list[int]], counts: list[int]) -> int:
    return sum(OVERHEAD + len(chunk) * max(counts[i] for i in chunk) for chunk in cuts)


def _brute_force(counts: list[int]) -> int:
    """The least cost over every cut of the length order into neighbouring runs."""
    order = sorted(range(len(counts)), key=counts.__getitem__)
    best = None
    for marks in itertools.product((False, True), repeat=len(order) - 1):
        cuts, chunk = [], [order[0]]
        for index, cut in zip(order[1:], marks, strict=True):
            if cut:
                cuts.append(chunk)
                chunk = []
            chunk.append(index)
        cuts.append(chunk)
        if all(len(c) == 1 or len(c) * max(counts[i] for i in c) <= BUDGET for c in cuts):
            cost = _cost(cuts, counts)
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_sentences_of_one_length_stay_one_pass() -> None:
    assert cheapest_cuts([18] * 64, budget=BUDGET, overhead=OVERHEAD) == [list(range(64))]


def test_a_long_text_goes_alone_and_the_short_ones_together() -> None:
    counts = [12, 256, 14, 11, 13]
    cuts = cheapest_cuts(counts, budget=BUDGET, overhead=OVERHEAD)
    assert sorted(map(sorted, cuts)) == [[0, 2, 3, 4], [1]]


def test_every_text_is_in_exactly_one_pass_within_the_budget() -> None:
    rng = random.Random(7)
    counts = [rng.randint(5, 256) for _ in range(64)]
    cuts = cheapest_cuts(counts, budget=BUDGET, overhead=OVERHEAD)
    assert sorted(i for chunk in cuts for i in chunk) == list(range(64))
    assert all(len(c) * max(counts[i] for i in c) <= BUDGET for c in cuts)


def test_a_text_past_the_budget_still_gets_a_pass_of_its_own() -> None:
    cuts = cheapest_cuts([4096, 10, 10], budget=BUDGET, overhead=OVERHEAD)
    assert sorted(map(sorted, cuts)) == [[0], [1, 2]]


def test_the_cut_is_the_cheapest_there_is() -> None:
    rng = random.Random(19)
    for _ in range(200):
        counts = [rng.choice((rng.randint(3, 40), rng.randint(5, 600))) for _ in range(9)]
        cuts = cheapest_cuts(counts, budget=BUDGET, overhead=OVERHEAD)
        assert _cost(cuts, counts) == _brute_force(counts), counts
