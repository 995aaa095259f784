"""Typed dependencies, so that route signatures read as plain types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.lifecycle import Lifecycle
from service.runtime.registry import ModelRegistry


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    lifecycle: Lifecycle


async def _state(request: Request) -> AppState:
    state: AppState = request.app.state.torchdock
    return state


State = Annotated[AppState, Depends(_state)]
