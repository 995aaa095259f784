"""`create_app()`: the lifespan wires settings, device, models, batchers and shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import __version__
from service.api.deps import AppState
from service.api.errors import install_error_handlers
from service.api.middleware import RequestContextMiddleware
from service.api.routes import ops, v1, v2
from service.config import Settings, get_settings
from service.lifecycle import Lifecycle
from service.observability.logging import configure_logging
from service.runtime.device import cpu_bf16_flags, resolve_device
from service.runtime.executor import TorchThread
from service.runtime.registry import ModelRegistry

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(level=settings.log_level, fmt=settings.log_format)
        torch_thread = TorchThread(threads=settings.effective_torch_threads())
        device = await torch_thread.run(resolve_device, settings.device)
        logger.info(
            "starting worker",
            extra={
                "device": str(device),
                "torch_threads": torch_thread.threads,
                "cpu_bf16_flags": list(cpu_bf16_flags()),
                "replica_id": settings.replica_id,
            },
        )
        registry = ModelRegistry(settings, torch_thread, device)
        lifecycle = Lifecycle(drain_delay_s=settings.drain_delay_s)
        app.state.torchdock = AppState(settings=settings, registry=registry, lifecycle=lifecycle)
        lifecycle.install_sigterm_hook(asyncio.get_running_loop())
        await registry.load_all()
        logger.info("readiness", extra={"ready": registry.ready})
        try:
            yield
        finally:
            lifecycle.begin_drain()
            await registry.stop()
            torch_thread.shutdown()
            lifecycle.uninstall()
            logger.info("worker stopped")

    app = FastAPI(
        title="torchdock",
        version=__version__,
        summary="PyTorch inference: Open Inference Protocol (KServe V2) and a friendly JSON API.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(v2.router)
    app.include_router(v1.router)
    app.include_router(ops.router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        replica_id=settings.replica_id,
    )
    return app
