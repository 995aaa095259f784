"""The benchmark itself must keep working: a tiny run prints a complete table with no errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.thread_cpu import thread_cpu
from service.config import available_cpus

pytestmark = pytest.mark.system

CPU_PARTS = ("client_cpu_s", "loop_cpu_s", "forward_cpu_s")


def test_bench_runs_and_reports(model_repo: Path, tmp_path: Path) -> None:
    raw = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--repository", str(model_repo)]
    command += ["--seconds", "1", "--ceiling-seconds", "0.3", "--concurrency", "1", "4"]
    command += ["--batch-sizes", "1", "4", "--only", "off", "--only", "default"]
    command += ["--texts", "mixed", "--json", str(raw)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Best ceiling" in completed.stdout
    assert "of ceiling next to it" in completed.stdout
    figures = json.loads(raw.read_text())
    assert figures["texts"] == "mixed"
    assert all(v > 0 for ceiling in figures["ceilings"].values() for v in ceiling.values())
    points = [p for run in figures["runs"] for p in run["points"]]
    assert len(points) == 4
    assert all(p["errors"] == 0 and p["rps"] > 0 for p in points)
    assert all(p["adjacent_ceiling"] > 0 for p in points)
    off, default = figures["runs"]
    assert all(p["mean_batch"] == 1.0 for p in off["points"])
    assert all(r > 0 for r in default["rss_mb"])
    for p in points:  # the CPU split: shares of the machine, so together at most all of it
        shares = [p[k] / (p["seconds"] * available_cpus()) for k in CPU_PARTS]
        assert all(s > 0 for s in shares) and sum(shares) <= 1.05, (p, shares)
    assert "forwards" in completed.stdout


def test_thread_cpu_tells_a_process_main_thread_from_its_others() -> None:
    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    spun, done = threading.Event(), threading.Event()

    def worker() -> None:
        spin(0.3)
        spun.set()
        done.wait()  # alive while measured: an exited thread's time leaves /proc with it

    before = thread_cpu([os.getpid()])
    thread = threading.Thread(target=worker)
    thread.start()
    spun.wait()
    after_thread = thread_cpu([os.getpid()])
    spin(0.3)
    after_main = thread_cpu([os.getpid()])
    done.set()
    thread.join()
    thread_part, main_part = after_thread - before, after_main - after_thread
    assert thread_part.other_s >= 0.25 and thread_part.loop_s < 0.1, thread_part
    assert main_part.loop_s >= 0.25 and main_part.other_s < 0.1, main_part


def test_bench_runs_the_peers_side_by_side(model_repo: Path, tmp_path: Path) -> None:
    """Infinity (ONNX engine) and LitServe from their own venvs, each checked against
    sentence-transformers, then torchdock again; a table and a plot of all of them."""
    raw, plot = tmp_path / "bench.json", tmp_path / "side.png"
    command = [sys.executable, "-m", "benchmarks.bench", "--repository", str(model_repo)]
    command += ["--seconds", "1", "--ceiling-seconds", "0.3", "--concurrency", "4"]
    command += ["--batch-sizes", "4", "--only", "default", "--peer", "infinity", "--peer"]
    command += ["litserve", "--infinity-engines", "optimum", "--infinity-batch-sizes", "8"]
    command += ["--plot", str(plot), "--json", str(raw)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "| PRECISION=fp32, RUNTIME=eager ÷ Infinity |" in completed.stdout
    assert "| PRECISION=fp32, RUNTIME=eager ÷ LitServe |" in completed.stdout
    figures = json.loads(raw.read_text())
    peers = figures["peers"]
    assert [p["label"] for p in peers] == [
        "Infinity optimum, batch 8 (fp32, ONNX Runtime)",
        "LitServe, max batch 32, 5 ms (fp32)",
    ]
    ours = figures["runs"]
    assert [r["label"] for r in ours] == [
        "batching on, default",
        "batching on, default, again after the peers",
    ]
    for run in [*peers, *ours]:
        assert all(p["errors"] == 0 and p["rps"] > 0 for p in run["points"]), run
        # The same weights in fp32 everywhere: every server agrees with the reference.
        assert run["min_cosine"] > 0.9999, run
    assert all(sum(p["rss_mb"]) > 50 for p in peers)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_storage_bench_builds_its_models_and_reports(redis_url: str, database_url: str) -> None:
    """With no --repository it builds the models it measures (it once built minilm alone, and
    every digits request got a 404), and every setting serves without errors."""
    command = [sys.executable, "-m", "benchmarks.bench_storage", "--redis-url", redis_url]
    command += ["--database-url", database_url, "--models", "digits", "--seconds", "1"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in completed.stdout.splitlines()
            if line.startswith("| digits |")]  # fmt: skip
    assert [r[1].strip() for r in rows] == [
        "no cache, no log", "log on", "cache on, all misses", "cache on, all hits",
    ]  # fmt: skip
    assert all(int(r[2].replace(",", "")) > 0 and r[5].strip() == "0" for r in rows), rows


def test_bench_serves_the_compiled_variant(variant_repo: Path, tmp_path: Path) -> None:
    """--runtime compiled: the repository pinned by digest, and both the ceiling and the server
    run the variant. (Without --repository the bench compiles its own, as packaging does.)"""
    raw = tmp_path / "bench.json"
    command = [sys.executable, "-m", "benchmarks.bench", "--runtime", "compiled"]
    command += ["--repository", str(variant_repo)]
    command += ["--seconds", "1", "--ceiling-seconds", "0.3", "--concurrency", "4"]
    command += ["--batch-sizes", "4", "--only", "default", "--json", str(raw)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ceiling: fp32, compiled" in completed.stderr
    (run,) = json.loads(raw.read_text())["runs"]
    assert run["runtime"] == "compiled"
    assert run["env"]["MODEL_TRUST"] == "digest-pinned"
    assert all(p["errors"] == 0 and p["rps"] > 0 for p in run["points"])


def test_the_int8_study_reports_every_scheme() -> None:
    command = [sys.executable, "-m", "benchmarks.int8", "--seconds", "0.2", "--texts", "16"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for scheme in ("dynamic-tensor", "dynamic-channel", "token-channel"):
        assert f"| {scheme}" in completed.stdout
    assert "one layer alone" in completed.stdout
    assert "Greedy, least sensitive first" in completed.stdout


def test_the_padding_bench_reports_both_cuts(model_repo: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.padding", "--repository", str(model_repo),
               "--rounds", "1", "--seconds", "0.2", "--batch-sizes", "4"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [line for line in completed.stdout.splitlines() if "batch   4:" in line]
    assert [row.split()[0] for row in rows] == ["mixed", "uniform"]
    assert all("budget only" in row and "cheapest" in row and "x" in row for row in rows)


def test_the_shape_cache_bench_reports_memory_and_speed_for_each_setting(model_repo: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.shape_cache", "--repository", str(model_repo),
               "--rounds", "1", "--seconds", "0.3", "--memory-seconds", "1", "--shapes", "4",
               "--settings", "serve", "defaults"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    memory = [line for line in lines if line.startswith("memory")]
    speed = [line for line in lines if line.startswith("speed")]
    assert [line.split(":")[0].split(None, 1)[1].strip() for line in memory] == [
        "serve's caps", "libraries' defaults",
    ]  # fmt: skip
    assert all(" random batches in 1 s" in line and "RssAnon" in line for line in memory)
    assert len(speed) == 2 and speed[0].endswith("1.00x the first")
    assert all(float(line.split(":")[1].split()[0]) > 0 for line in speed)


def test_the_soak_reports_growth_per_worker_of_a_server_run_with_its_env(model_repo: Path) -> None:
    command = [sys.executable, "-m", "benchmarks.soak", "--repository", str(model_repo),
               "--minutes", "0.1", "--warmup-minutes", "0", "--interval", "2",
               "--max-growth", "1", "--env", '{"WORKERS": "1"}']  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    samples = [line for line in completed.stdout.splitlines() if line.startswith("t=")]
    assert len(samples) == 3 and all("errors=0" in line for line in samples)
    # One worker, as --env asked: one RSS figure a sample, and one growth figure.
    assert all("/" not in line.split("rss_mb=")[1] for line in samples)
    summary = completed.stdout.splitlines()[-1]
    assert summary.startswith("RSS after warm-up") and summary.count("%") == 1


def test_the_shadow_bench_reports_both_phases(postgres_admin_url: str) -> None:
    command = [sys.executable, "-m", "benchmarks.shadow", "--rounds", "1", "--seconds", "1",
               "--work", "8"]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "TEST_DATABASE_URL": postgres_admin_url},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "server A, no shadow: p50" in completed.stdout
    assert "server B, shadowed: p50" in completed.stdout
    assert "client p99 ratio, B / A:" in completed.stdout
    assert "'computed':" in completed.stdout


def test_the_event_loop_bench_measures_this_tree_against_a_commit() -> None:
    command = [sys.executable, "-m", "benchmarks.event_loop", "--api", "v2", "--rounds", "1",
               "--requests", "300", "--against", "HEAD"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = completed.stdout.splitlines()
    for tree in ("this tree", "HEAD"):
        (figures,) = [line for line in lines if line.strip().startswith(f"{tree}: loop CPU")]
        assert float(figures.split("loop CPU ")[1].split(" ms")[0]) > 0
    assert lines[-1].startswith("  this tree / HEAD: loop CPU")
    worktrees = subprocess.run(["git", "worktree", "list"], capture_output=True, text=True)
    assert "torchdock-event-loop-" not in worktrees.stdout  # removed again


def test_the_onnx_runtime_bench_compares_the_engines_at_equal_accuracy(variant_repo: Path) -> None:
    """The packaged artifact and its ONNX variant get the same token ids: the embeddings must
    agree, or the speeds compare different work."""
    command = [sys.executable, "-m", "benchmarks.onnx_runtime", "--rounds", "1", "--seconds",
               "0.2", "--batch-sizes", "1", "4", "--repository", str(variant_repo)]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    cosine = re.search(r"embeddings to torch's (\d\.\d+)", completed.stdout)
    assert cosine is not None and float(cosine.group(1)) >= 0.999, completed.stdout
    rows = [line.split("|") for line in completed.stdout.splitlines() if line.startswith("| ")]
    header, *figures = rows
    assert [r[1].strip() for r in figures] == ["1", "4"], rows
    engines = [c for c in header if c.strip().endswith("sentences/s")]
    assert engines[:2] == [" torch fp32, sentences/s ", " ONNX Runtime fp32, sentences/s "]
    for row in figures:
        rates, ratios = row[2 : 2 + len(engines)], row[2 + len(engines) : -1]
        assert all(float(r) > 0 for r in rates), row
        assert len(ratios) == len(engines) - 1 and all(r.strip().endswith("x") for r in ratios)
