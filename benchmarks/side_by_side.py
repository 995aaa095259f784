"""torchdock against its peers (benchmarks/peers) in one sitting: each server in turn, the same
texts, the same load generator, the same CPUs, and each one's accuracy checked against
sentence-transformers in fp32 before its load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson

from benchmarks.httpload import LoadResult, measure
from benchmarks.peers import PeerServer

# Held-out sentences for the accuracy check: the numbered corpus variants the load sends are
# short, so longer and odder texts join them.
ACCURACY_EXTRA = [
    "A much longer sentence, which keeps going for a while so that the attention mask and the"
    " padding of a mixed batch both matter to the pooled vector at the end of it all.",
    "Ünïcödé, emoji 🙂 and CJK 日本語 in one line.",
    "42",
]


@dataclass
class SideRun:
    """One server configuration's figures: a point per concurrency."""

    label: str
    points: list[LoadResult] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    min_cosine: float = float("nan")
    family: str = "torchdock"  # the server, whatever its configuration


def accuracy_texts(texts: list[str]) -> list[str]:
    return texts[:29] + ACCURACY_EXTRA


def reference_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    """sentence-transformers in fp32, the model's own code path: the yardstick for every server."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float64)


def min_cosine(vectors: np.ndarray, reference: np.ndarray) -> float:
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    return float(np.min(np.sum(vectors * reference, axis=1) / norms))


def torchdock_embeddings(url: str, texts: list[str]) -> np.ndarray:
    with httpx.Client(timeout=60) as client:
        answers = [
            client.post(f"{url}/v1/models/minilm:predict", json={"instances": [t]}) for t in texts
        ]
    for answer in answers:
        answer.raise_for_status()
    return np.array(
        [orjson.loads(a.content)["predictions"][0]["embedding"] for a in answers], dtype=np.float64
    )


def run_peer(
    server: PeerServer,
    texts: list[str],
    reference: np.ndarray,
    concurrencies: list[int],
    seconds: float,
) -> SideRun:
    run = SideRun(server.label, family=server.family)
    server.start()
    try:
        server.wait_ready()
        run.min_cosine = min_cosine(server.embed(accuracy_texts(texts)), reference)
        requests = server.requests(texts)
        for concurrency in concurrencies:
            result = measure(server.port, requests, concurrency, seconds)
            run.points.append(result)
        run.rss_mb = server.rss_mb()
    finally:
        server.stop()
    return run


def report(ours: list[SideRun], peers: list[SideRun], texts: str = "uniform") -> str:
    """The table, and torchdock's best against each peer's best at every concurrency."""
    lines = [
        f"## Side by side ({texts} texts): the same texts, load generator and CPUs for every"
        " server",
        "",
        "Accuracy: the minimum cosine, over held-out texts, of the server's embedding to"
        " sentence-transformers' own in fp32.",
        "",
        "| server | conc. | req/s | p50 ms | p99 ms | p99/p50 | errors | min cosine | RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in [*ours, *peers]:
        rss = f"{sum(run.rss_mb):,.0f}"
        for p in run.points:
            lines.append(
                f"| {run.label} | {p.concurrency} | {p.rps:,.0f} | {p.p50_ms:.1f}"
                f" | {p.p99_ms:.1f} | {p.p99_ms / p.p50_ms:.2f} | {p.errors}"
                f" | {run.min_cosine:.6f} | {rss} |"
            )
    # Per precision of torchdock's: the peers serve fp32, and bf16 is not the same accuracy.
    concurrencies = [p.concurrency for p in ours[0].points]
    lines += ["", "| torchdock's best ÷ the peer's best | "
              + " | ".join(f"c={c}" for c in concurrencies) + " |"]  # fmt: skip
    lines.append("|---|" + "---:|" * len(concurrencies))
    by_precision: dict[str, list[SideRun]] = {}
    for run in ours:
        by_precision.setdefault(run.label.rsplit("(", 1)[-1].rstrip(")"), []).append(run)
    families: dict[str, list[SideRun]] = {}
    for run in peers:
        families.setdefault(run.family, []).append(run)
    for precision, mine in by_precision.items():
        for family, theirs in families.items():
            ratios = []
            for i in range(len(concurrencies)):
                best_theirs = max(r.points[i].rps for r in theirs)
                best_mine = max(r.points[i].rps for r in mine)
                ratios.append(f"{best_mine / best_theirs:.2f}x" if best_theirs else "—")
            lines.append(f"| {precision} ÷ {family} | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def as_json(runs: list[SideRun]) -> list[dict[str, object]]:
    return [
        {
            "label": r.label,
            "min_cosine": r.min_cosine,
            "rss_mb": r.rss_mb,
            "points": [
                {
                    "concurrency": p.concurrency,
                    "rps": p.rps,
                    "p50_ms": p.p50_ms,
                    "p99_ms": p.p99_ms,
                    "errors": p.errors,
                }
                for p in r.points
            ],
        }
        for r in runs
    ]


def plot(runs: list[SideRun], path: Path, title: str) -> None:
    """Throughput, p50 and p99 against concurrency, a line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(16, 5))
    for run in runs:
        x = [p.concurrency for p in run.points]
        axes[0].plot(x, [p.rps for p in run.points], marker="o", label=run.label)
        axes[1].plot(x, [p.p50_ms for p in run.points], marker="o")
        axes[2].plot(x, [p.p99_ms for p in run.points], marker="o")
    for axis, name in zip(axes, ["requests/s", "p50 ms", "p99 ms"], strict=True):
        axis.set_xlabel("concurrency")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    figure.legend(loc="lower center", ncol=3, fontsize=8)
    figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.2, 1, 1))
    figure.savefig(path, dpi=110)
    plt.close(figure)
