"""Request bodies parsed by orjson: Starlette parses with the standard library's json.

A V1 digits body (64 nested floats) spent ~8% of the event loop's time in json.decoder. orjson
is also stricter where it matters here: NaN and Infinity are not JSON, and it refuses them.
Its JSONDecodeError subclasses json.JSONDecodeError, so FastAPI's error path is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

# What other JSON encoders write for non-finite floats (Python's json, tritonclient).
_NON_FINITE = ("NaN", "Infinity", "-Infinity")


def names_json(content_type: str | None) -> bool:
    """Whether a body sent with this Content-Type is read as JSON, as FastAPI reads it: no type
    (or an empty one), application/json, or application/*+json, in any case."""
    if not content_type:
        return True
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def loads_json(body: bytes) -> Any:
    """The document in body; json.JSONDecodeError (with a reason) where it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if e.doc.startswith(_NON_FINITE, e.pos):
            raise json.JSONDecodeError(
                "NaN and Infinity are not JSON numbers", e.doc, e.pos
            ) from None
        raise


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_json(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_with_orjson(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return parse_with_orjson
