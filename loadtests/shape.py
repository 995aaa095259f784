"""The load shape: users over time from the active profile's stages (loadtests/slo.toml)."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from locust import LoadTestShape, User, events
from locust.runners import MasterRunner

from loadtests.run import RUN, active_profile, options

log = logging.getLogger("torchdock.loadtest")

Tick = tuple[int, float, list[type[User]] | None]

# Each worker's latest report to the master, by worker id (time.monotonic()).
_reported_at: dict[str, float] = {}


@events.worker_report.add_listener
def _note_report(client_id: str, data: dict[str, Any]) -> None:
    _reported_at[client_id] = time.monotonic()


class ProfileShape(LoadTestShape):
    """The active profile's stages, one after another; the run ends after the last one, or at
    --run-time when that comes first (a quick check of a long profile).

    A distributed run drains before it ends. A headless master that ends the run sends its
    workers "quit" and writes the CSV 0.5 s later, while each worker is still letting its
    users finish their requests (--stop-timeout), so the requests of a run's last second were
    served but missing from the counts. Draining first stops the users (0 of them), and ends
    once every worker has reported after its users were gone."""

    _drain_started: float | None = None
    _users_gone_at: float | None = None

    def tick(self) -> Tick | None:
        stages = self._stages()
        if stages is not None or not isinstance(self.runner, MasterRunner):
            return stages
        return self._drain(self.runner)

    def _drain(self, runner: MasterRunner) -> Tick | None:
        now = time.monotonic()
        if self._drain_started is None:
            self._drain_started = now
            RUN.close_stage(runner.stats.total)
        if runner.user_count == 0 and self._users_gone_at is None:
            self._users_gone_at = now
        if self._users_gone_at is not None and all(
            _reported_at.get(worker, 0.0) > self._users_gone_at for worker in runner.clients
        ):
            return None
        # Users have --stop-timeout to finish; each worker reports every 3 s after that.
        if now - self._drain_started > options(runner.environment).stop_timeout + 10:
            log.warning("workers did not report after their users stopped; ending the run")
            return None
        return 0, 100.0, None

    def _stages(self) -> Tick | None:
        runner = self.runner
        if runner is None:
            return None
        environment = runner.environment
        profile = active_profile(environment)
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        run_time = options(environment).run_time
        if run_time and elapsed >= run_time:
            return None
        # User classes named on the command line win over the profile's.
        by_name = cast(dict[str, type[User]], environment.available_user_classes)
        chosen = options(environment).user_classes
        classes = None if chosen else [by_name[name] for name in profile.user_classes]
        for index, stage in enumerate(profile.stages):
            if elapsed < stage.until_s:
                if len(RUN.stages) == index:
                    RUN.open_stage(index + 1, stage.users, runner.stats.total)
                return stage.users, stage.spawn_rate, classes
        return None
