"""Shared fixtures: a model repository built once per session, and the app with its lifespan."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import psycopg.conninfo
import pytest
import redis
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.config import Settings
from service.packaging.build import build_models
from tests.system.server import ServerProcess

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled models, built from source once for the whole session."""
    root = tmp_path_factory.mktemp("model-repository")
    build_models(root)
    return root


@pytest.fixture(scope="session")
def variant_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled models with their compiled variants in fp32 and bf16 and their ONNX variant,
    built once for the session (read-only: copy what a test changes)."""
    root = tmp_path_factory.mktemp("compiled-repository")
    build_models(root, compile=("fp32", "bf16"), onnx=True)
    return root


@pytest.fixture
def repo_copy(model_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the repository that a test may change."""
    target = tmp_path / "repo"
    shutil.copytree(model_repo, target)
    return target


@pytest.fixture
def make_settings(model_repo: Path) -> SettingsFactory:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_repository": model_repo,
            # Most tests need only the cheap model; `client` and others ask for all.
            "models": ["digits"],
            "device": "cpu",
            "log_format": "text",
            "replica_id": "test-replica",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return factory


@pytest.fixture
async def client(make_settings: SettingsFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_settings(models=[])) as http:
        yield http


class serve:  # a context manager that reads like a function
    """The app with its lifespan running, and an httpx client bound to it."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        self._lifespan = LifespanManager(self.app, startup_timeout=120)

    async def __aenter__(self) -> httpx.AsyncClient:
        await self._lifespan.__aenter__()
        self._client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self._lifespan.app), base_url="http://testserver"
        )
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(*exc)


# Real Redis and Postgres --------------------------------------------------------------------
# Taken from TEST_REDIS_URL and TEST_DATABASE_URL (defaults: the local servers); scripts/test
# starts them where they are not running. These fixtures never skip: a missing server is an
# error, so that CI cannot pass without them.


@pytest.fixture(scope="session")
def redis_server_url() -> str:
    return os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture
def redis_url(redis_server_url: str) -> Iterator[str]:
    """An empty Redis database for this test."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    yield redis_server_url
    client.flushdb()
    client.close()


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test, dropped afterwards."""
    name = f"torchdock_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(postgres_admin_url, dbname=name)
    yield url
    with psycopg.connect(postgres_admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


# The real server ----------------------------------------------------------------------------

StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(model_repo: Path, tmp_path: Path) -> Iterator[StartServer]:
    """`torchdock serve` (gunicorn and its uvicorn workers) as a process, until the test ends."""
    started: list[ServerProcess] = []

    def start(workers: int = 2, **env: str) -> ServerProcess:
        base = {
            "MODEL_REPOSITORY": str(model_repo),
            "DEVICE": "cpu",
            "LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"metrics-{len(started)}"),
        }
        server = ServerProcess(
            env={**base, **env}, workers=workers, log_path=tmp_path / f"server-{len(started)}.log"
        )
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()
