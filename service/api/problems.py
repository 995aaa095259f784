"""RFC 9457 problem details: every error leaves the service as application/problem+json."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from service.observability.logging import request_id_var

PROBLEM_TYPE_BASE = "urn:torchdock:problem:"
PROBLEM_MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An HTTP-level failure raised inside the API layer."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}


def problem_body(status: int, slug: str, title: str, detail: str, **extra: Any) -> bytes:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "request_id": request_id_var.get(),
        # KServe V2 clients read the message from `error`.
        "error": detail,
    }
    body.update(extra)
    return orjson.dumps(body)


def problem_response(problem: Problem) -> Response:
    return Response(
        problem_body(problem.status, problem.slug, problem.title, problem.detail, **problem.extra),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )
