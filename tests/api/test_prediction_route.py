"""The prediction routes answer bad bodies exactly as FastAPI's own handler does, and are the
first routes the app tries."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest
from fastapi import APIRouter, Depends, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Mount

from service.api.deps import State
from service.api.json_route import OrjsonRoute
from service.api.prediction_route import PredictionRoute
from service.api.routes import v1, v2
from service.api.schemas import PredictRequest
from service.app import create_app
from tests.conftest import SettingsFactory, serve
from tests.digits_data import ZEROS

pytestmark = pytest.mark.integration


async def _same_signature(
    name: str, body: PredictRequest, request: Request, state: State
) -> Response:
    return Response(b"{}", media_type="application/json")


# What FastAPI's handler makes of a body, for the same signature as V1's predict.
_by_fastapi = APIRouter(strict_content_type=False, route_class=OrjsonRoute)
_by_fastapi.add_api_route("/parity/models/{name}:predict", _same_signature, methods=["POST"])

JSON = {"content-type": "application/json"}
BAD_BODIES = [
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(b"{not json", JSON, id="malformed"),
    pytest.param(b'{"instances": [NaN]}', JSON, id="nan"),
    pytest.param(b'{"instances": []}', JSON, id="no-instances"),
    pytest.param(b'{"rows": [1], "instances": 3}', JSON, id="two-errors"),
    pytest.param(b"[1, 2]", JSON, id="not-an-object"),
    pytest.param(b'{"instances": [1]', {}, id="no-content-type-malformed"),
    pytest.param(
        b"{}", {"content-type": "application/problem+json; charset=utf-8"}, id="plus-json"
    ),
    pytest.param(b"instances=1", {"content-type": "text/plain"}, id="text-plain"),
    pytest.param(b"\x00\x01", {**JSON, "inference-header-content-length": "2"}, id="binary"),
]


def _without_request_id(r: httpx.Response) -> tuple[int, str, dict[str, Any]]:
    body = r.json()
    body.pop("request_id")
    body.pop("instance", None)
    return r.status_code, r.headers["content-type"], body


@pytest.mark.parametrize(("content", "headers"), BAD_BODIES)
async def test_a_bad_body_gets_the_answer_fastapi_gives(
    make_settings: SettingsFactory, content: bytes, headers: dict[str, str]
) -> None:
    served = serve(make_settings())
    served.app.include_router(_by_fastapi)
    async with served as http:
        ours = await http.post("/v1/models/digits:predict", content=content, headers=headers)
        theirs = await http.post("/parity/models/digits:predict", content=content, headers=headers)
    assert ours.status_code in (400, 415, 422)
    assert _without_request_id(ours) == _without_request_id(theirs)


async def test_a_body_with_an_empty_content_type_is_read_as_json(
    make_settings: SettingsFactory,
) -> None:
    """As with no Content-Type at all (V2 clients send none): an empty one names no type."""
    body = orjson.dumps({"instances": [ZEROS]})
    async with serve(make_settings()) as http:
        for headers in ({}, {"content-type": ""}):
            r = await http.post("/v1/models/digits:predict", content=body, headers=headers)
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == 1


async def test_path_parameters_of_a_mount_above_are_not_passed_on(
    make_settings: SettingsFactory,
) -> None:
    served = serve(make_settings())
    outer = Starlette(routes=[Mount("/tenants/{tenant}", app=served.app)])
    async with served:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            r = await http.post("/tenants/a/v1/models/digits:predict", json={"instances": [ZEROS]})
    assert r.status_code == 200, r.text


def test_an_endpoint_it_would_call_wrongly_is_refused_when_registered() -> None:
    async def takes_a_query(name: str, body: PredictRequest, limit: int) -> Response:
        raise AssertionError("never called")

    async def takes_no_model(
        name: str, body: dict[str, Any], request: Request, state: State
    ) -> Response:
        raise AssertionError("never called")

    router = APIRouter(route_class=PredictionRoute)
    with pytest.raises(TypeError, match="takes"):
        router.add_api_route("/m/{name}", takes_a_query, methods=["POST"])
    with pytest.raises(TypeError, match="pydantic model"):
        router.add_api_route("/m/{name}", takes_no_model, methods=["POST"])
    # It would not run them: refused rather than skipped.
    with pytest.raises(TypeError, match="no dependencies"):
        router.add_api_route(
            "/m/{name}", _same_signature, methods=["POST"], dependencies=[Depends(lambda: None)]
        )


async def test_a_client_that_leaves_before_its_body_is_read_is_no_server_error(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    served = serve(make_settings())
    async with served:
        path = "/v1/models/digits:predict"
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "client": ("127.0.0.1", 1), "server": ("test", 80),
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"100")],
        }  # fmt: skip
        messages = iter([{"type": "http.request", "body": b'{"inst', "more_body": True},
                         {"type": "http.disconnect"}])  # fmt: skip

        async def receive() -> dict[str, Any]:
            return next(messages)

        statuses: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await served.app(scope, receive, send)
    assert statuses == [400]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_the_prediction_routes_are_tried_first(make_settings: SettingsFactory) -> None:
    """Every route tried before a prediction's costs it event-loop time (~0.1 ms in all)."""
    app = create_app(make_settings())
    routers = [getattr(route, "original_router", None) for route in app.router.routes]
    assert [router for router in routers if router is not None][:2] == [
        v2.predictions,
        v1.predictions,
    ]
    paths = {route.path for route in v1.predictions.routes + v2.predictions.routes}  # type: ignore[attr-defined]
    assert paths == {
        "/v1/models/{name}:predict",
        "/v1/models/{name}/versions/{version}:predict",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }
