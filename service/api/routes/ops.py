"""Operational endpoints: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.observability.metrics import render_latest

router = APIRouter(tags=["ops"])


@router.get("/metrics", summary="Prometheus metrics (every worker of this server)")
async def prometheus_metrics() -> Response:
    body, content_type = render_latest()
    return Response(body, media_type=content_type)
