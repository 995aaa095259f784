"""Every worker's view of the routing policies: MODEL_SETTINGS' own, overridden by the stored
ones (Postgres), reread every ROUTING_REFRESH_S.

A stored policy wins over the setting, even a plain one: an aborted canary stays aborted when
a replica restarts. While Postgres is down, the policies read last stay in force.
"""

from __future__ import annotations

import datetime as dt
import logging
import time

import psycopg

from service.config import Settings
from service.observability import metrics
from service.periodic import PeriodicTask
from service.rollouts.policy import RoutingPolicy
from service.rollouts.store import StoredPolicy, load_policies, save_policy

logger = logging.getLogger(__name__)


class RolloutsUnavailable(Exception):
    """Changing a policy needs the shared store (DATABASE_URL)."""


class RoutingTable:
    def __init__(self, settings: Settings, conninfo: str | None) -> None:
        self._configured = {
            name: overrides.routing
            for name, overrides in settings.model_settings.items()
            if overrides.routing is not None
        }
        self._conninfo = conninfo
        self._stored: dict[str, StoredPolicy] = {}
        self._healthy = True
        self._refresher = PeriodicTask("routing-refresh", settings.routing_refresh_s, self.refresh)
        self._canaries: set[tuple[str, str]] = set()
        if conninfo is not None:
            metrics.ROUTING_READ.set(0)  # shows this worker as behind until its first read
        self._publish()

    @property
    def shared(self) -> bool:
        return self._conninfo is not None

    def policy_for(self, model: str) -> RoutingPolicy | None:
        stored = self._stored.get(model)
        return stored.policy if stored is not None else self._configured.get(model)

    def revision(self, model: str) -> int:
        stored = self._stored.get(model)
        return stored.revision if stored is not None else 0

    def models(self) -> set[str]:
        return set(self._configured) | set(self._stored)

    def shadows(self) -> set[tuple[str, int]]:
        """(model, version) of every shadow the policies name."""
        return {
            (model, policy.shadow.version)
            for model in self.models()
            if (policy := self.policy_for(model)) is not None and policy.shadow is not None
        }

    async def start(self) -> None:
        if self._conninfo is None:
            return
        await self.refresh()
        self._refresher.start()

    async def stop(self) -> None:
        await self._refresher.stop()

    async def refresh(self) -> bool:
        if self._conninfo is None:
            return False
        started = time.time()
        try:
            stored = await load_policies(self._conninfo)
        except psycopg.errors.UndefinedTable:
            return False  # migrations not applied yet: DB_AUTO_UPGRADE or db-admin will
        except (psycopg.Error, OSError, TimeoutError, ValueError) as e:
            if self._healthy:
                logger.warning("routing: cannot read the policies (%s); keeping the last", e)
            self._healthy = False
            return False
        if not self._healthy:
            logger.info("routing: read the policies again")
        for model, ours in self._stored.items():
            if ours.revision > (stored[model].revision if model in stored else 0):
                # This worker saved it while the read was under way (rows are never deleted).
                stored[model] = ours
        for model, entry in stored.items():
            if entry.revision > self.revision(model):
                logger.info(
                    "routing: %s follows revision %d: %s",
                    model,
                    entry.revision,
                    entry.policy.model_dump(exclude_none=True),
                )
        self._stored, self._healthy = stored, True
        self._publish()
        metrics.ROUTING_READ.set(started)  # what it read is at least as new as this
        return True

    async def save(
        self,
        model: str,
        policy: RoutingPolicy,
        *,
        action: str,
        reason: str | None = None,
        expected: int | None = None,
    ) -> StoredPolicy:
        """Store `policy` for every worker and replica; this worker follows it at once."""
        if self._conninfo is None:
            raise RolloutsUnavailable(
                "changing a routing policy needs DATABASE_URL, where every worker reads it"
            )
        saved = await save_policy(
            self._conninfo, model, policy, action=action, reason=reason, expected=expected
        )
        self._stored = {**self._stored, model: saved}
        self._publish()
        return saved

    def override_locally(self, model: str, policy: RoutingPolicy) -> None:
        """This worker alone follows `policy` from now on: where there is no shared store, each
        worker's guard aborts for itself (they all read the same metrics)."""
        current = self._stored.get(model)
        revision = (current.revision if current else 0) + 1
        now = dt.datetime.now(dt.UTC)
        self._stored = {**self._stored, model: StoredPolicy(model, policy, revision, now)}
        self._publish()

    def _publish(self) -> None:
        canaries: set[tuple[str, str]] = set()
        for model in self.models():
            policy = self.policy_for(model)
            if model in self._stored:
                metrics.ROUTING_REVISION.labels(model).set(self.revision(model))
            canary = policy.canary if policy else None
            if canary is not None:
                canaries.add((model, str(canary.version)))
                metrics.CANARY_PERCENT.labels(model, str(canary.version)).set(canary.percent)
        for gone in self._canaries - canaries:
            metrics.CANARY_PERCENT.labels(*gone).set(0)
        self._canaries = canaries
