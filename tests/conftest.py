"""Shared fixtures: a model repository built once per session, and the app with its lifespan."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.app import create_app
from service.config import Settings
from service.models.build import build_models

SettingsFactory = Callable[..., Settings]


@pytest.fixture(scope="session")
def model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled models, built from source once for the whole session."""
    root = tmp_path_factory.mktemp("model-repository")
    build_models(root)
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
