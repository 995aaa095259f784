"""torchdock under load: user classes, the profile-driven load shape, and the SLO gates.

    locust --config loadtests/locust.conf --profile steady            # headless, a named profile
    locust --config loadtests/locust.conf --profile stress MinilmUser  # one user class only
    locust -f loadtests/locustfile.py --host http://127.0.0.1:8000    # the web UI, on :8089

Profiles and gates live in monitoring/prometheus/slo.toml; scripts/loadtest runs a profile
against a gunicorn process or the compose stack and keeps the report. See loadtests/README.md.
"""

from __future__ import annotations

import functools
import os
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, between, constant, events
from locust.argument_parser import LocustArgumentParser

# Imported for Locust to find: the shape class, and the listeners that gate the run.
from loadtests import gates, payloads
from loadtests.run import RUN
from loadtests.shape import ProfileShape

__all__ = ["ProfileShape", "gates"]

CORPUS = payloads.sentences()
# One pool for every user and worker: the same keys repeat across them, as they would in front
# of one shared cache.
CACHE_POOL_SEED = 7
# A stack with API_KEYS=required wants a key on every prediction.
_KEY = os.environ.get("TORCHDOCK_API_KEY", "")
AUTH = {"Authorization": f"Bearer {_KEY}"} if _KEY else {}


@events.init_command_line_parser.add_listener
def _arguments(parser: LocustArgumentParser) -> None:
    group = parser.add_argument_group("torchdock")
    group.add_argument(
        "--report-dir", default="", help="where environment.json, gates.json and stages.csv go"
    )
    group.add_argument(
        "--cache-hit-ratio",
        type=float,
        default=0.8,
        help="CacheHeavyUser: share of repeated inputs",
    )
    group.add_argument(
        "--slo-max-failure-ratio", type=float, default=None, help="override the profile's gate"
    )
    group.add_argument("--slo-p95-ms", type=float, default=None, help="override the profile's gate")
    group.add_argument("--slo-p99-ms", type=float, default=None, help="override the profile's gate")


# --- requests --------------------------------------------------------------------------------


def post_checked(
    user: FastHttpUser,
    path: str,
    body: dict[str, Any],
    *,
    name: str,
    check: Callable[[Any], str | None],
    rejection_expected: bool = False,
) -> float:
    """POST, then fail the request unless the body is right and the request id comes back.
    Returns the seconds a 429 asked the client to wait (0 otherwise)."""
    retry_after = 0.0
    request_id = uuid.uuid4().hex
    with user.client.post(
        path,
        json=body,
        headers={"X-Request-ID": request_id, **AUTH},
        name=name,
        catch_response=True,
    ) as response:
        if response.headers.get("X-Request-ID") != request_id:
            response.failure("the response does not carry the request's X-Request-ID")
        elif response.status_code == 429 and rejection_expected:
            if response.headers.get("Retry-After"):
                RUN.tallies["expected 429"] += 1
                retry_after = float(response.headers["Retry-After"])
                response.success()
            else:
                response.failure("429 without Retry-After")
        elif response.status_code != 200:
            response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
        elif problem := check(response.json()):
            response.failure(f"wrong body: {problem}")
        else:
            if cache := response.headers.get("X-Cache"):
                RUN.tallies[f"cache {cache}"] += 1
            response.success()
    return retry_after


def digits_v1(user: TorchdockUser) -> None:
    count = user.rng.choice((1, 1, 1, 2, 4))
    post_checked(
        user, "/v1/models/digits:predict",
        {"instances": [payloads.digit(user.rng) for _ in range(count)]},
        name="digits v1 predict", check=lambda body: payloads.check_digits_v1(body, count),
    )  # fmt: skip


def digits_v2(user: TorchdockUser) -> None:
    count = user.rng.choice((1, 2))
    data = [v for _ in range(count) for v in payloads.digit(user.rng)]
    tensor = {"name": "pixels", "shape": [count, 8, 8], "datatype": "FP32", "data": data}
    post_checked(
        user, "/v2/models/digits/infer", {"id": uuid.uuid4().hex, "inputs": [tensor]},
        name="digits v2 infer", check=lambda body: payloads.check_digits_v2(body, count),
    )  # fmt: skip


def minilm(user: TorchdockUser) -> None:
    texts = [payloads.text(user.rng, CORPUS) for _ in range(user.rng.choice((1, 1, 2)))]
    post_checked(
        user, "/v1/models/minilm:predict", {"instances": texts},
        name="minilm v1 embed", check=lambda body: check_and_tally_embeddings(body, len(texts)),
    )  # fmt: skip


def check_and_tally_embeddings(body: Any, count: int) -> str | None:
    problem = payloads.check_embeddings(body, count)
    if problem is None:
        RUN.tallies["truncated"] += sum(p["truncated"] for p in body["predictions"])
    return problem


@functools.cache
def cache_pool(hit_ratio: float) -> payloads.ZipfPool:
    return payloads.ZipfPool(random.Random(CACHE_POOL_SEED), hit_ratio=hit_ratio)


def cache_heavy(user: TorchdockUser) -> None:
    pool = cache_pool(user.environment.parsed_options.cache_hit_ratio)
    post_checked(
        user, "/v1/models/digits:predict", {"instances": [pool.draw()]},
        name="digits v1 predict (cache-heavy)",
        check=lambda body: payloads.check_digits_v1(body, 1),
    )  # fmt: skip


def overload(user: TorchdockUser) -> None:
    texts = [payloads.text(user.rng, CORPUS) for _ in range(8)]
    retry_after = post_checked(
        user, "/v1/models/minilm:predict", {"instances": texts},
        name="minilm v1 embed (overload)", check=lambda body: payloads.check_embeddings(body, 8),
        rejection_expected=True,
    )  # fmt: skip
    # A client that ignored Retry-After would turn the overload into a storm of rejections that
    # takes the server's CPU from the work it admitted; the README asks clients to honour it.
    # (Locust has patched time.sleep to yield to the other users.)
    time.sleep(retry_after)


# --- users -----------------------------------------------------------------------------------


class TorchdockUser(FastHttpUser):
    abstract = True
    # Think time: users of a service pause between requests; OverloadUser does not.
    wait_time = between(0.05, 0.15)
    rng: random.Random

    def on_start(self) -> None:
        self.rng = random.Random()


class DigitsV1User(TorchdockUser):
    """Friendly JSON API: single digits and small batches."""

    tasks = [digits_v1]


class DigitsV2User(TorchdockUser):
    """Open Inference Protocol: JSON tensors."""

    tasks = [digits_v2]


class MinilmUser(TorchdockUser):
    """Sentence embeddings, with the sentence lengths of loadtests/corpus.txt."""

    tasks = [minilm]


class CacheHeavyUser(TorchdockUser):
    """Zipf-repeated inputs: about --cache-hit-ratio of them hit the prediction cache."""

    tasks = [cache_heavy]


class OverloadUser(TorchdockUser):
    """No think time, batches of 8 embeddings: past capacity, where 429 is the right answer.
    It waits as long as a 429's Retry-After asks, as well-behaved clients do."""

    wait_time = constant(0)
    tasks = [overload]


class MixedUser(TorchdockUser):
    """A weighted mix of the above, short of overload."""

    # Locust takes a dict of weights too; its annotation says only list.
    tasks = {digits_v1: 4, digits_v2: 2, minilm: 3, cache_heavy: 1}  # type: ignore[assignment]
