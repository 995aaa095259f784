"""gunicorn with uvicorn workers, from Settings; models load in each worker, after fork."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from uvicorn_worker import UvicornWorker

from service.config import Settings
from service.server.fair_accept import FairAcceptServer
from service.server.http_limits import limited_protocol


class TorchdockWorker(UvicornWorker):  # type: ignore[misc]
    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        "loop": "auto",
        "lifespan": "on",
        "server_header": False,
        "access_log": False,  # the app writes its own access line, with the request id
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn waits for in-flight requests forever unless told otherwise; stop just before
        # gunicorn's own graceful timeout would SIGKILL the worker.
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 1)
        settings: Settings = self.app.settings
        self.config.http = limited_protocol(
            max_head_bytes=settings.max_header_bytes, head_timeout_s=settings.header_timeout_s
        )

    async def _serve(self) -> None:
        # uvicorn_worker's own _serve, with a server that balances connections across workers.
        self.config.app = self.wsgi
        server = FairAcceptServer(config=self.config, fair=self.cfg.workers > 1)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


# The files prometheus_client's multiprocess mode writes: `counter_<pid>.db`,
# `gauge_livesum_<pid>.db` and so on.
_METRICS_FILE = re.compile(r"^(counter|gauge|histogram|summary)_[a-z_]*\d+\.db$")


def prepare_multiprocess_dir(path: Path) -> None:
    """Start every server without stale metrics files, which would add dead workers. Only those
    files go: PROMETHEUS_MULTIPROC_DIR may name a directory that holds anything else."""
    if path.exists():
        for child in path.iterdir():
            if child.is_file() and _METRICS_FILE.match(child.name):
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class TorchdockApplication(BaseApplication):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        options: dict[str, Any] = {
            "bind": f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}",
            "workers": s.effective_workers(),
            "worker_class": f"{TorchdockWorker.__module__}.{TorchdockWorker.__qualname__}",
            "timeout": s.worker_timeout_s,
            "graceful_timeout": s.graceful_timeout_s,
            "keepalive": s.keepalive_s,
            "forwarded_allow_ips": s.forwarded_allow_ips,
            "child_exit": _child_exit,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level.lower(),
            "proc_name": "torchdock",
            # gunicorn's control socket (gunicornc) is unused here: no socket, no attack surface,
            # and nothing to write on a read-only file system.
            "control_socket_disable": True,
            "worker_tmp_dir": str(s.worker_tmp_dir or "/dev/shm")
            if s.worker_tmp_dir or Path("/dev/shm").is_dir()
            else None,
        }
        for key, value in options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        from service.app import create_app

        return create_app(self.settings)
