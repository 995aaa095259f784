"""Requests that cost a worker far more than they cost the client (issue 18, findings 1, 2)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import pytest

from service.runtime.handlers.images import MAX_PIXELS, MAX_REQUEST_PIXELS
from tests.conftest import StartServer
from tests.security.images import blank_png_b64

pytestmark = pytest.mark.integration

BIG = blank_png_b64(4096)


def _liveness_during(base_url: str, attack: Callable[[httpx.Client], None]) -> list[float]:
    """Seconds that each /v2/health/live took while `attack` ran on its own connection."""
    done = threading.Event()

    def run() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            try:
                attack(http)
            finally:
                done.set()

    attacker = threading.Thread(target=run)
    attacker.start()
    timings: list[float] = []
    with httpx.Client(base_url=base_url, timeout=60) as http:
        time.sleep(0.05)  # the attack's body is on its way
        while True:  # at least one probe, however quick the attack
            began = time.monotonic()
            assert http.get("/v2/health/live").status_code == 200
            timings.append(time.monotonic() - began)
            if done.is_set():
                break
            time.sleep(0.02)
    attacker.join()
    return timings


def test_too_many_images_are_refused_before_any_is_decoded(start_server: StartServer) -> None:
    # Finding 1: 180 of them were all decoded, on the event loop, then refused: 9 s of a frozen
    # worker, its health probes included.
    server = start_server(workers=1)
    answers: list[httpx.Response] = []

    def attack(http: httpx.Client) -> None:
        for _ in range(3):
            answers.append(
                http.post("/v1/models/digits:predict", json={"instances": [{"b64": BIG}] * 180})
            )

    timings = _liveness_during(server.base_url, attack)
    assert [r.status_code for r in answers] == [422] * 3
    assert answers[0].json()["type"].endswith(":too-many-instances")
    assert max(timings) < 1.0, timings  # before: 12.9 s
    print(f"\nliveness during 3 x 180 large PNGs: max {max(timings) * 1000:.1f} ms")


def test_images_over_the_request_budget_are_refused_from_their_headers(
    start_server: StartServer,
) -> None:
    server = start_server(workers=1)
    over = MAX_REQUEST_PIXELS // MAX_PIXELS + 1
    answers: list[httpx.Response] = []

    def attack(http: httpx.Client) -> None:
        for _ in range(3):
            answers.append(
                http.post("/v1/models/digits:predict", json={"instances": [{"b64": BIG}] * 60})
            )
        answers.append(
            http.post("/v1/models/digits:predict", json={"instances": [{"b64": BIG}] * over})
        )

    timings = _liveness_during(server.base_url, attack)
    assert [r.status_code for r in answers] == [413] * 4
    problem = answers[-1].json()
    assert problem["type"].endswith(":request-too-costly")
    assert f"budget of {MAX_REQUEST_PIXELS}" in problem["detail"]
    assert max(timings) < 1.0, timings
    assert problem["request_id"]
    print(f"\nliveness during requests over the pixel budget: max {max(timings) * 1000:.1f} ms")


def test_images_within_budget_decode_off_the_event_loop(start_server: StartServer) -> None:
    server = start_server(workers=1)
    within = MAX_REQUEST_PIXELS // MAX_PIXELS
    answers: list[httpx.Response] = []

    def attack(http: httpx.Client) -> None:
        for _ in range(4):
            answers.append(
                http.post("/v1/models/digits:predict", json={"instances": [{"b64": BIG}] * within})
            )

    timings = _liveness_during(server.base_url, attack)
    assert [r.status_code for r in answers] == [200] * 4
    assert len(timings) >= 5, "the decoding was too quick to probe: the test measures nothing"
    # Before, the loop was held for each whole request's decoding; the bound leaves room for
    # a noisy machine, and the closing note reports the figure against the 100 ms target.
    assert max(timings) < 0.25, timings
    print(f"\nliveness during {4 * within} large PNGs decoding: max {max(timings) * 1000:.1f} ms")


# Paragraphs at the 20,000-character limit: 256 tokens each once truncated. Distinct, since
# equal instances of a request are computed once.
LONG_TEXTS = [f"{i}: " + "a few words of one very long paragraph, " * 500 for i in range(64)]
LONG_TEXTS = [text[:20_000] for text in LONG_TEXTS]


def test_texts_over_the_token_budget_are_refused(start_server: StartServer) -> None:
    # Finding 2: 64 such texts were 5.4 s of compute on the one torch thread.
    server = start_server(workers=1, MODELS='["minilm"]')
    answers: list[httpx.Response] = []

    def attack(http: httpx.Client) -> None:
        for _ in range(3):
            answers.append(http.post("/v1/models/minilm:predict", json={"instances": LONG_TEXTS}))

    timings = _liveness_during(server.base_url, attack)
    assert [r.status_code for r in answers] == [413] * 3
    assert "16384 tokens" in answers[0].json()["detail"]
    assert max(timings) < 1.0, timings
    print(f"\nliveness while 3 x 64 long texts were counted: max {max(timings) * 1000:.1f} ms")


def test_a_huge_request_holds_up_a_small_one_for_about_one_pass(
    start_server: StartServer,
) -> None:
    # 32 long texts: within the budget, four passes of 2,048 tokens.
    server = start_server(workers=1, MODELS='["digits", "minilm"]')
    huge = {"instances": LONG_TEXTS[:32]}
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        assert http.post("/v1/models/minilm:predict", json=huge).status_code == 200  # warm
        started = threading.Event()
        huge_s: list[float] = []

        def send_huge() -> None:
            with httpx.Client(base_url=server.base_url, timeout=60) as own:
                began = time.monotonic()
                started.set()
                headers = {"Cache-Control": "no-cache"}
                assert own.post("/v1/models/minilm:predict", json=huge, headers=headers).is_success
                huge_s.append(time.monotonic() - began)

        def timed(path: str, body: dict[str, object]) -> float:
            began = time.monotonic()
            assert http.post(path, json=body, headers={"Cache-Control": "no-cache"}).is_success
            return time.monotonic() - began

        small = {
            "digits": ("/v1/models/digits:predict", {"instances": [[[0.0] * 8] * 8]}),
            "minilm": ("/v1/models/minilm:predict", {"instances": ["a short sentence"]}),
        }
        waits: dict[str, float] = {}
        for name, (path, body) in small.items():
            sender = threading.Thread(target=send_huge)
            sender.start()
            started.wait()
            time.sleep(0.2)  # the huge request is in its first pass
            waits[name] = timed(path, body)
            sender.join()
    # Before, each small request waited for every pass of the huge one.
    for (name, wait), total in zip(waits.items(), huge_s, strict=True):
        print(f"\n{name} behind 32 long texts: {wait:.3f} s; the huge request took"
              f" {total:.3f} s ({wait / total:.2f} of it)")  # fmt: skip
        assert wait < total / 2, (name, wait, total)
