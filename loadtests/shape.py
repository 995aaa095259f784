"""The load shape: users over time from the active profile's stages (in slo.toml)."""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from locust import LoadTestShape, User, events
from locust import stats as locust_stats
from locust.runners import MasterRunner, Runner

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

    Every run drains before it ends, so that its CSV counts every request. Locust writes the
    CSV once a second and not again at exit (locustio/locust#1806, #2299): requests that end
    after the last write, while the users finish what they were doing, are served but missing
    from it. A distributed master is further behind: it hears of its workers' requests only in
    their reports, every 3 s. So the drain stops every user (0 of them), waits until the
    counts are final (local: the users are gone; distributed: each worker has reported after
    its users were gone), and ends the run once the CSV writer has written after that."""

    _drain_started: float | None = None
    _users_gone_at: float | None = None
    _counts_final_at: float | None = None

    def tick(self) -> Tick | None:
        stages = self._stages()
        if stages is not None or self.runner is None:
            return stages
        return self._drain(self.runner)

    def _drain(self, runner: Runner) -> Tick | None:
        now = time.monotonic()
        if self._drain_started is None:
            self._drain_started = now
            RUN.close_stage(runner.stats.total)
        if runner.user_count == 0 and self._users_gone_at is None:
            self._users_gone_at = now
        if self._counts_final_at is None and self._counts_final(runner):
            self._counts_final_at = now
        if self._counts_final_at is not None:
            # Two intervals: the writer's next write after that moment falls inside them.
            if now - self._counts_final_at > 2 * locust_stats.CSV_STATS_INTERVAL_SEC:
                return None
        # Users have --stop-timeout to finish; each worker reports every 3 s after that.
        elif now - self._drain_started > options(runner.environment).stop_timeout + 10:
            log.warning("the users' last requests were not all counted; ending the run")
            return None
        return 0, 100.0, None

    def _counts_final(self, runner: Runner) -> bool:
        if self._users_gone_at is None:
            return False
        if not isinstance(runner, MasterRunner):
            return True  # a local runner counts each request as it ends
        gone = self._users_gone_at
        return all(_reported_at.get(worker, 0.0) > gone for worker in runner.clients)

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
