"""Start the real `torchdock serve` (gunicorn + uvicorn workers) as a process, and stop it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.prom import sample_value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 1.0
) -> None:
    """Until `condition` holds; an assertion or HTTP error inside it counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (AssertionError, httpx.HTTPError, ValueError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for: {what}")


class ServerProcess:
    def __init__(self, *, env: dict[str, str], workers: int, log_path: Path) -> None:
        self.port = free_port()
        self.workers = workers
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        command = [
            str(Path(sys.executable).parent / "torchdock"),
            "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", str(workers),
        ]  # fmt: skip
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches every worker
        )

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until every worker is ready, so that no test depends on which one started first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                ready = httpx.get(f"{self.base_url}/v2/health/ready", timeout=1).status_code == 200
                metrics = httpx.get(f"{self.base_url}/metrics", timeout=5).text
                if ready and sample_value(metrics, "torchdock_workers_ready") >= self.workers:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.log_path.read_text()[-4000:]}")

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> ServerProcess:
        """Ready to serve; stopped when the block ends, however it ends."""
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        self._log.close()
