"""A worker's side of its shadow process (service/rollouts/shadow_worker.py).

Started on the worker's first shadow request, stopped when shadows stop coming, started again
when one comes after it died. Calls are blocking: the shadow runner makes them from a thread of
its own, which waits on the pipe without holding the GIL.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from service.config import Settings
from service.runtime.repository import VersionRef

logger = logging.getLogger(__name__)

# Loading and warming up a large version at the lowest priority, on a busy machine, can take
# minutes; past this the process is taken for stuck, killed, and the request counted as failed.
_REPLY_TIMEOUT_S = 600.0
_EXIT_WAIT_S = 5.0


class ShadowProcessFailed(Exception):
    """The shadow process did not answer: it died, or took too long."""


class ShadowPredictionFailed(Exception):
    """The shadow version failed to load or to predict; the message is the process's."""


class ShadowProcess:
    def __init__(
        self,
        settings: Settings,
        *,
        cpus: frozenset[int] = frozenset(),
        reply_timeout_s: float = _REPLY_TIMEOUT_S,
    ) -> None:
        """`cpus`: the ones kept for shadows (SHADOW_CPUS); none: it runs where the worker does."""
        self._settings = settings
        self._cpus = cpus
        self._reply_timeout_s = reply_timeout_s
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def predict(self, ref: VersionRef, digest: str | None, items: list[Any]) -> list[Any]:
        with self._lock:
            if self.pid is None:
                self._start()
            assert self._to_child is not None and self._from_child is not None
            try:
                self._to_child.send((ref, digest, items))
                answered = self._from_child.poll(self._reply_timeout_s)
                if answered:
                    status, payload = self._from_child.recv()
            except (EOFError, OSError) as e:
                self.stop()
                raise ShadowProcessFailed(f"the shadow process ended ({type(e).__name__})") from e
            if not answered:
                self.stop()
                raise ShadowProcessFailed(f"no answer in {self._reply_timeout_s:.0f} s")
        if status != "ok":
            raise ShadowPredictionFailed(payload)
        return payload  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Ends the process: closing its input ends it; one that does not is killed."""
        process, self._process = self._process, None
        for connection in (self._to_child, self._from_child):
            if connection is not None:
                connection.close()
        self._to_child = self._from_child = None
        if process is None:
            return
        try:
            process.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        logger.info("shadow process stopped", extra={"pid": process.pid})

    def _start(self) -> None:
        self.stop()  # whatever is left of one that died
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # Its metrics would land beside the worker's and count as a live worker's; the worker
        # reports what the shadows did.
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self._to_child = Connection(to_child_w, readable=False)
        self._from_child = Connection(from_child_r, writable=False)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "service.rollouts.shadow_worker",
                 str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
            )  # fmt: skip
        except OSError:
            self.stop()
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._to_child.send((self._settings, self._cpus))
        logger.info("shadow process started", extra={"pid": self._process.pid})
