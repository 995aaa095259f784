"""Every bad request gets a precise status and an RFC 9457 body with its request id."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.conftest import SettingsFactory, serve
from tests.digits_data import ZEROS
from tests.prom import sample_value

pytestmark = pytest.mark.integration


def distinct(count: int, *, corner: float = 0.0) -> list[list[list[float]]]:
    """Different instances (identical ones are computed once: single-flight). Lists made with
    different `corner` values share no instance."""
    return [[[corner, *[i / count * 16] * 7], *[[i / count * 16] * 8] * 7] for i in range(count)]


def _assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    assert body["type"] == f"urn:torchdock:problem:{slug}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body


def _v2(
    data: Any, shape: list[int], datatype: str = "FP32", name: str = "pixels"
) -> dict[str, Any]:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize(
    ("path", "content", "status", "slug"),
    [
        ("/v1/models/digits:predict", b"{not json", 400, "malformed-json"),
        ("/v2/models/digits/infer", b'{"inputs": [', 400, "malformed-json"),
        ("/v1/models/digits:predict", b'{"instances": []}', 422, "invalid-request"),
        ("/v1/models/digits:predict", b'{"rows": [1]}', 422, "invalid-request"),
        ("/v2/models/digits/infer", b'{"inputs": "x"}', 422, "invalid-request"),
        ("/v1/models/digits:predict", b'{"instances": [[1, 2, 3]]}', 422, "invalid-input"),
        ("/v1/models/digits:predict", b'{"instances": ["seven"]}', 422, "invalid-input"),
        ("/v1/models/digits:predict", b'{"instances": [{"b64": "%%%"}]}', 422, "invalid-input"),
        (
            "/v1/models/digits:predict",
            b'{"instances": [{"b64": "aGVsbG8="}]}',
            422,
            "invalid-input",
        ),
    ],
)
async def test_bad_bodies(
    client: httpx.AsyncClient, path: str, content: bytes, status: int, slug: str
) -> None:
    r = await client.post(path, content=content, headers={"content-type": "application/json"})
    _assert_problem(r, status, slug)


async def test_nan_and_infinity_are_not_json(client: httpx.AsyncClient) -> None:
    # Python's json module accepts NaN, Infinity and 1e999 (as inf); they are not JSON.
    for literal in (b"NaN", b"Infinity", b"1e999"):
        grid = b'{"instances": [[' + b",".join([literal] * 64) + b"]]}"
        r = await client.post(
            "/v1/models/digits:predict", content=grid, headers={"content-type": "application/json"}
        )
        detail = _assert_problem(r, 400, "malformed-json")["detail"]
        assert ("NaN and Infinity" in detail) == (literal != b"1e999"), detail
        v2 = (
            b'{"inputs":[{"name":"pixels","shape":[1,8,8],"datatype":"FP32","data":['
            + b",".join([literal] * 64)
            + b"]}]}"
        )
        r = await client.post(
            "/v2/models/digits/infer", content=v2, headers={"content-type": "application/json"}
        )
        _assert_problem(r, 400, "malformed-json")


async def test_out_of_range_rejected(client: httpx.AsyncClient) -> None:
    too_big = [[99.0] * 8 for _ in range(8)]
    r = await client.post("/v1/models/digits:predict", json={"instances": [too_big]})
    _assert_problem(r, 422, "invalid-input")
    r = await client.post("/v2/models/digits/infer", json=_v2([99.0] * 64, [1, 8, 8]))
    _assert_problem(r, 422, "invalid-input")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (_v2([0.0] * 64, [1, 8, 8], datatype="INT32"), "datatype"),
        (_v2([0.0] * 64, [1, 64]), "shape"),
        (_v2([0.0] * 63, [1, 8, 8]), "values do not fill"),
        (_v2([0.0] * 64, [1, 8, 8], name="image"), "unknown input"),
        (_v2([[1, 2], [3]], [1, 8, 8]), "regular"),
        ({**_v2([0.0] * 64, [1, 8, 8]), "outputs": [{"name": "logits"}]}, "unknown output"),
        (_v2([], [0, 8, 8]), "empty"),
    ],
)
async def test_v2_tensor_errors(client: httpx.AsyncClient, body: Any, fragment: str) -> None:
    r = await client.post("/v2/models/digits/infer", json=body)
    problem = _assert_problem(r, 422, "invalid-input")
    assert fragment in problem["detail"]
    assert problem["error"] == problem["detail"]  # what KServe V2 clients print


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/nope:predict",
        "/v1/models/digits/versions/9:predict",
        "/v1/models/digits/versions/latest:predict",
        "/v2/models/nope/infer",
        "/v2/models/digits/versions/2/infer",
    ],
)
async def test_unknown_model_or_version(client: httpx.AsyncClient, path: str) -> None:
    body = {"instances": [ZEROS]} if path.startswith("/v1") else _v2([0.0] * 64, [1, 8, 8])
    _assert_problem(await client.post(path, json=body), 404, "model-not-found")
    meta = await client.get("/v2/models/nope")
    _assert_problem(meta, 404, "model-not-found")


# Unicode digits pass str.isdigit but not int(): each of these answered 500 once.
@pytest.mark.parametrize("version", ["%C2%B2", "%D9%A3", "1" * 5000])
@pytest.mark.parametrize(
    ("method", "template"),
    [
        ("POST", "/v1/models/digits/versions/{}:predict"),
        ("POST", "/v2/models/digits/versions/{}/infer"),
        ("GET", "/v2/models/digits/versions/{}"),
        ("GET", "/v2/models/digits/versions/{}/ready"),
    ],
)
async def test_a_version_that_is_not_an_ascii_number_is_not_found(
    client: httpx.AsyncClient, method: str, template: str, version: str
) -> None:
    body = {"instances": [ZEROS]} if "/v1/" in template else _v2([0.0] * 64, [1, 8, 8])
    r = await client.request(method, template.format(version), json=body)
    problem = _assert_problem(r, 404, "model-not-found")
    assert problem["request_id"]


async def test_too_many_instances(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/digits:predict", json={"instances": [ZEROS] * 65})
    assert "max_batch_size" in _assert_problem(r, 422, "too-many-instances")["detail"]


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    _assert_problem(await client.get("/v3/anything"), 404, "not-found")
    _assert_problem(await client.get("/v2/models/digits/infer"), 405, "method-not-allowed")


async def test_wrong_content_type(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/v1/models/digits:predict", content=b"instances=1", headers={"content-type": "text/plain"}
    )
    _assert_problem(r, 415, "unsupported-media-type")


@pytest.mark.parametrize(
    ("content_type", "status", "slug"),
    [
        ("text/x+json", 415, "unsupported-media-type"),  # not application/*: never read as JSON
        ("Application/JSON; charset=UTF-8", 422, "invalid-request"),  # media types ignore case
        ("", 422, "invalid-request"),  # names no type: read as JSON, like no header at all
        ("application/vnd.api+json", 422, "invalid-request"),
    ],
)
async def test_the_answer_names_the_media_type_as_the_body_was_read(
    client: httpx.AsyncClient, content_type: str, status: int, slug: str
) -> None:
    """A body read as JSON that fails validation is a 422, one that was not read is a 415."""
    for path, body in (
        ("/v1/models/digits:predict", b'{"instances": []}'),
        ("/v2/models/digits/infer", b'{"inputs": "x"}'),
    ):
        r = await client.post(path, content=body, headers={"content-type": content_type})
        _assert_problem(r, status, slug)


async def test_invalid_timeout_header(client: httpx.AsyncClient) -> None:
    for value in ("soon", "0", "-1", "100000"):
        r = await client.post(
            "/v1/models/digits:predict",
            json={"instances": [ZEROS]},
            headers={"X-Request-Timeout": value},
        )
        _assert_problem(r, 400, "invalid-timeout")


async def test_body_over_limit(make_settings: SettingsFactory) -> None:
    async with serve(make_settings(max_body_bytes=4096)) as http:
        big = {"instances": [ZEROS] * 40}  # about 10 KB of JSON
        r = await http.post("/v1/models/digits:predict", json=big)
        _assert_problem(r, 413, "body-too-large")

        async def chunks() -> Any:  # no Content-Length: the limit is enforced while reading
            for _ in range(10):
                yield b" " * 1000

        r = await http.post(
            "/v1/models/digits:predict",
            content=chunks(),
            headers={"content-type": "application/json"},
        )
        _assert_problem(r, 413, "body-too-large")


async def test_deadline_exceeded_before_compute(make_settings: SettingsFactory) -> None:
    # The batch stays open for 1 s; a 0.2 s deadline expires in the queue, before any forward.
    settings = make_settings(model_settings={"digits": {"max_batch_delay_ms": 1000}})
    labels = {"model_name": "digits", "model_version": "1"}
    async with serve(settings) as http:
        before = (await http.get("/metrics")).text
        r = await http.post(
            "/v1/models/digits:predict",
            json={"instances": [ZEROS]},
            headers={"X-Request-Timeout": "0.2"},
        )
        _assert_problem(r, 504, "deadline-exceeded")
        await asyncio.sleep(1.2)  # past the batch's close: it would have run by now
        after = (await http.get("/metrics")).text
    for name, delta in (("torchdock_timeouts_total", 1), ("torchdock_batch_size_count", 0)):
        assert sample_value(after, name, **labels) - sample_value(before, name, **labels) == delta


async def test_queue_full_is_429_with_retry_after(make_settings: SettingsFactory) -> None:
    settings = make_settings(
        max_queue_size=64, model_settings={"digits": {"max_batch_delay_ms": 500}}
    )
    async with serve(settings) as http:
        first = asyncio.create_task(
            http.post("/v1/models/digits:predict", json={"instances": distinct(60)})
        )
        await asyncio.sleep(0.1)
        r = await http.post(
            "/v1/models/digits:predict", json={"instances": distinct(10, corner=1.0)}
        )
        problem = _assert_problem(r, 429, "queue-full")
        assert int(r.headers["retry-after"]) >= 1
        assert "full" in problem["detail"]
        assert (await first).status_code == 200
