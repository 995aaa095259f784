"""Typed dependencies, so that route signatures read as plain types."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.keys.rate_limit import KeyRateLimiter
from service.keys.ring import KeyRing
from service.lifecycle import Lifecycle
from service.rollouts.shadow import ShadowRunner
from service.rollouts.table import RoutingTable
from service.runtime.executor import DecodeThreads
from service.runtime.inference import InferenceService
from service.runtime.model_control import ModelController
from service.runtime.registry import ModelRegistry
from service.storage.prediction_log import NullLog, PredictionLog


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    lifecycle: Lifecycle
    inference: InferenceService
    prediction_log: PredictionLog = field(default_factory=NullLog)
    model_control: ModelController = field(kw_only=True)
    decode_threads: DecodeThreads = field(kw_only=True)
    routing: RoutingTable = field(kw_only=True)
    shadows: ShadowRunner = field(kw_only=True)
    # Both None unless API_KEYS=required.
    key_ring: KeyRing | None = field(default=None, kw_only=True)
    rate_limiter: KeyRateLimiter | None = field(default=None, kw_only=True)


async def _state(request: Request) -> AppState:
    state: AppState = request.app.state.torchdock
    return state


State = Annotated[AppState, Depends(_state)]
