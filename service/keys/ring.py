"""Every replica's copy of the keys table, refreshed in the background.

Verifying a key is then a dictionary lookup and one SHA-256, with no database round trip per
request. A revoked key stops working within API_KEYS_REFRESH_S; while Postgres is down, the
keys loaded last keep working.
"""

from __future__ import annotations

import datetime as dt
import logging

import psycopg

from service.keys.keys import ApiKey, digest, key_id_of, matches
from service.keys.store import load_keys
from service.observability import metrics
from service.periodic import PeriodicTask

logger = logging.getLogger(__name__)

# Compared against when the key id is unknown, so that the answer takes as long either way.
_NOBODY = ApiKey("", "", digest("nobody"), None, None, None, dt.datetime.min, None)


class KeyRing:
    def __init__(self, conninfo: str, *, refresh_s: float, timeout_s: float = 2.0) -> None:
        self._conninfo = conninfo
        self._refresh_s = refresh_s
        self._timeout_s = timeout_s
        self._keys: dict[str, ApiKey] = {}
        self.loaded = False
        self._healthy = True
        self._refresher = PeriodicTask("api-keys-refresh", refresh_s, self.refresh)

    async def start(self) -> None:
        await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def refresh(self) -> bool:
        try:
            keys = await load_keys(self._conninfo, timeout_s=self._timeout_s)
        except (psycopg.Error, OSError, TimeoutError) as e:
            if self._healthy:
                logger.warning("api keys: cannot read them from Postgres (%s); keeping the"
                               " %d loaded before", e, len(self._keys))  # fmt: skip
            self._healthy = False
            return False
        if not self._healthy:
            logger.info("api keys: read from Postgres again")
        self._keys, self.loaded, self._healthy = keys, True, True
        metrics.API_KEYS_LOADED.set(len(keys))
        return True

    def verify(self, key: str, *, now: dt.datetime | None = None) -> ApiKey | None:
        """The key's record when `key` is one of ours and usable now; None otherwise."""
        key_id = key_id_of(key)
        stored = self._keys.get(key_id) if key_id else None
        if not matches(key, stored or _NOBODY) or stored is None:
            return None
        return stored if stored.usable_at(now or dt.datetime.now(dt.UTC)) else None
