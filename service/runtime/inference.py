"""One prediction, free of HTTP: cached instances, single-flight for the rest, then the batcher.

V1 and V2 both call `InferenceService.predict`; they keep what is HTTP's (parsing the body,
the deadline and cache-control headers, the response and its log row).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.config import Settings
from service.observability import metrics
from service.runtime.batcher import Batched
from service.runtime.model import LoadedModel
from service.runtime.singleflight import SingleFlight


class InstanceCache(Protocol):
    """Predictions kept per instance key (the Redis cache, or none)."""

    enabled: bool

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set_many(self, entries: dict[str, bytes], *, ttl_s: int) -> None: ...


# The cache key of one instance of a model version, from the instance's own key bytes.
KeyFor = Callable[[LoadedModel, bytes], str]


@dataclass
class Outcome:
    predictions: list[Any]
    cache_result: str  # hit, miss, partial or bypass
    keys: list[str]
    batched: Batched[Any] | None


class InferenceService:
    def __init__(
        self,
        settings: Settings,
        cache: InstanceCache,
        key_for: KeyFor,
        single_flight: SingleFlight[Any, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._key_for = key_for
        self._single_flight: SingleFlight[Any, Any] = single_flight or SingleFlight()

    async def predict(
        self,
        model: LoadedModel,
        items: Sequence[Any],
        *,
        deadline: float,
        use_cache: bool,
        is_abandoned: Callable[[], Awaitable[bool]],
    ) -> Outcome:
        """The predictions of `items`, whose count the caller has checked. `use_cache=False`
        (the client's no-cache) computes every instance, and still stores the results."""
        handler = model.handler
        keys = [self._key_for(model, handler.instance_key(item)) for item in items]
        overrides = self._settings.overrides_for(model.name)
        cacheable = self._cache.enabled and overrides.cache is not False
        consult = cacheable and use_cache
        predictions: list[Any] = [None] * len(items)
        if consult:
            for index, raw in enumerate(await self._cache.get_many(keys)):
                if raw is not None:
                    # A foreign entry counts as a miss, and is overwritten below.
                    with contextlib.suppress(ValueError):
                        predictions[index] = handler.decode_prediction(raw)
        missing = [i for i, p in enumerate(predictions) if p is None]
        batched: Batched[Any] | None = None
        if missing:

            async def compute(subset: list[Any]) -> list[Any]:
                nonlocal batched
                batched = await model.batcher.submit_detailed(
                    subset, deadline=deadline, is_abandoned=is_abandoned
                )
                return batched.outputs

            outputs, leaders = await self._single_flight.run(
                [keys[i] for i in missing], [items[i] for i in missing], compute, deadline=deadline
            )
            for index, output in zip(missing, outputs, strict=True):
                predictions[index] = output
            if cacheable:
                limit = overrides.cache_max_value_bytes or self._settings.cache_max_value_bytes
                entries = {}
                for leader in leaders:
                    encoded = handler.encode_prediction(outputs[leader])
                    if len(encoded) <= limit:
                        entries[keys[missing[leader]]] = encoded
                await self._cache.set_many(
                    entries, ttl_s=overrides.cache_ttl_s or self._settings.cache_ttl_s
                )
        labels = (model.name, str(model.version))
        if consult:
            hits = len(items) - len(missing)
            metrics.CACHE_RESULTS.labels(*labels, "hit").inc(hits)
            metrics.CACHE_RESULTS.labels(*labels, "miss").inc(len(missing))
            result = "hit" if not missing else "miss" if not hits else "partial"
        else:
            result = "bypass"
        return Outcome(predictions, result, keys, batched)
