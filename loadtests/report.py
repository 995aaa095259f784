"""What a load-test report records beside Locust's own CSV and HTML: the environment of the run,
so that two runs can be compared knowing what differed, and the verdicts of the gates."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# The vector extensions that decide what a figure means here: bf16 and int8 speed-ups need
# them, and two machines both called "AMD EPYC" differ by 2x without them.
_FEATURES = {"avx512f": "AVX-512", "avx512_bf16": "BF16", "avx512_vnni": "VNNI", "amx_tile": "AMX"}


def cpu_model() -> str:
    """The CPU's name and its vector extensions, e.g. 'AMD EPYC (AVX2)'."""
    try:
        name, flags = "", set[str]()
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
        if name:
            features = [label for flag, label in _FEATURES.items() if flag in flags]
            if not features and "avx2" in flags:
                features = ["AVX2"]
            return f"{name} ({', '.join(features)})" if features else name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    if revision := os.environ.get("TORCHDOCK_REVISION"):
        return revision
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()  # fmt: skip
    return done.stdout.strip() + ("-dirty" if dirty else "")


def server_metadata(host: str) -> Any:
    """The models, versions, devices and precisions the target serves, as it says itself."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/v1/models", timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError) as error:
        return f"unavailable: {error}"


def environment(host: str, profile: str, user_classes: list[str]) -> dict[str, Any]:
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "profile": profile,
        "user_classes": user_classes,
        "host": host,
        "target": os.environ.get("LOADTEST_TARGET", "url"),
        "git_revision": git_revision(),
        "image": os.environ.get("TORCHDOCK_IMAGE"),
        "replicas": os.environ.get("API_REPLICAS"),
        "server_cpus": os.environ.get("LOADTEST_SERVER_CPUS"),
        "server": server_metadata(host),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "locust_cpus": sorted(os.sched_getaffinity(0)),
    }


def write_json(directory: Path, name: str, data: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(data, indent=2, default=str) + "\n")
