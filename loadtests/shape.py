"""The load shape: users over time from the active profile's stages (loadtests/slo.toml)."""

from __future__ import annotations

from typing import cast

from locust import LoadTestShape, User

from loadtests.run import RUN, active_profile, options


class ProfileShape(LoadTestShape):
    """The active profile's stages, one after another; the run ends after the last one, or at
    --run-time when that comes first (a quick check of a long profile)."""

    def tick(self) -> tuple[int, float, list[type[User]] | None] | None:
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
