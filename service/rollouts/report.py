"""`torchdock rollout report`: how the versions of a model compare, from the prediction log.

Per version and role: requests, server errors (5xx), latency p50 and p99. Per shadow version:
its agreement with the version it shadowed, on the same instances (top-1 agreement for
classifiers, mean cosine for embeddings, max abs diff for tensors). Over time, for the plot:
p99 latency per version and role, and the shadows' mean agreement.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from service.rollouts.store import load_events

_VERSIONS_SQL = """
SELECT model_version AS version, role, count(*) AS requests,
       count(*) FILTER (WHERE status_code >= 500) AS errors,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY total_ms) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY total_ms) AS p99_ms
FROM predictions
WHERE model_name = %(model)s AND created_at >= %(since)s
GROUP BY model_version, role ORDER BY model_version, role
"""
_AGREEMENT_SQL = """
SELECT model_version AS version, compared_version, agreement_kind AS kind, count(*) AS requests,
       avg(agreement) AS mean, min(agreement) AS min, max(agreement) AS max
FROM predictions
WHERE model_name = %(model)s AND created_at >= %(since)s AND role = 'shadow'
  AND agreement IS NOT NULL
GROUP BY model_version, compared_version, agreement_kind ORDER BY model_version
"""
_TIMELINE_SQL = """
SELECT date_bin(%(step)s, created_at, %(since)s) AS at, model_version AS version, role,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY total_ms) AS p99_ms,
       avg(agreement) AS agreement
FROM predictions
WHERE model_name = %(model)s AND created_at >= %(since)s
GROUP BY 1, 2, 3 ORDER BY 1
"""


@dataclass(frozen=True)
class VersionStats:
    version: int
    role: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def error_ratio(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class AgreementStats:
    version: int
    compared_version: int
    kind: str
    requests: int
    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class Report:
    model: str
    since: dt.datetime
    until: dt.datetime
    versions: list[VersionStats]
    agreement: list[AgreementStats]
    timeline: list[dict[str, Any]]
    events: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "versions": [{**asdict(v), "error_ratio": v.error_ratio} for v in self.versions],
            "agreement": [asdict(a) for a in self.agreement],
            "events": [{**e, "created_at": e["created_at"].isoformat()} for e in self.events],
        }


async def build_report(conninfo: str, model: str, *, since: dt.timedelta) -> Report:
    until = dt.datetime.now(dt.UTC)
    start = until - since
    # About 30 points across the period, for the plot.
    step = max(dt.timedelta(seconds=5), since / 30)
    params = {"model": model, "since": start, "step": step}
    async with (
        await psycopg.AsyncConnection.connect(conninfo) as conn,
        conn.cursor(row_factory=dict_row) as cursor,
    ):
        await cursor.execute(_VERSIONS_SQL, params)
        versions = [VersionStats(**row) for row in await cursor.fetchall()]
        await cursor.execute(_AGREEMENT_SQL, params)
        agreement = [AgreementStats(**row) for row in await cursor.fetchall()]
        await cursor.execute(_TIMELINE_SQL, params)
        timeline = list(await cursor.fetchall())
    events = await load_events(conninfo, model, since=start)
    return Report(model, start, until, versions, agreement, timeline, events)


def render_text(report: Report) -> str:
    lines = [
        f"rollout report: {report.model}, {report.since:%Y-%m-%d %H:%M:%S} to"
        f" {report.until:%H:%M:%S} UTC",
        "",
        f"{'version':>7}  {'role':<8} {'requests':>9} {'errors':>7} {'error %':>8}"
        f" {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for v in report.versions:
        lines.append(
            f"{v.version:>7}  {v.role:<8} {v.requests:>9} {v.errors:>7}"
            f" {100 * v.error_ratio:>8.2f} {v.p50_ms:>8.1f} {v.p99_ms:>8.1f}"
        )
    if not report.versions:
        lines.append("  (no prediction in the period)")
    lines += ["", "shadow agreement, on the same instances:"]
    for a in report.agreement:
        lines.append(
            f"  version {a.version} against {a.compared_version}: {a.kind} mean {a.mean:.4f},"
            f" min {a.min:.4f}, max {a.max:.4f} over {a.requests} requests"
        )
    if not report.agreement:
        lines.append("  (no shadow comparison in the period)")
    if report.events:
        lines += ["", "policy changes:"]
        for e in report.events:
            lines.append(
                f"  {e['created_at']:%H:%M:%S} revision {e['revision']} {e['action']}:"
                f" {e['policy']}{' (' + e['reason'] + ')' if e['reason'] else ''}"
            )
    return "\n".join(lines)


def plot(report: Report, path: Path) -> None:
    """A PNG of p99 latency per version and role, and the shadows' agreement, over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from e
    figure, (latency, agreement) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    series: dict[tuple[int, str], list[tuple[dt.datetime, float, float | None]]] = {}
    for row in report.timeline:
        series.setdefault((row["version"], row["role"]), []).append(
            (row["at"], row["p99_ms"], row["agreement"])
        )
    for (version, role), points in sorted(series.items()):
        times = [p[0] for p in points]
        latency.plot(times, [p[1] for p in points], marker=".", label=f"v{version} {role}")
        if role == "shadow":
            agreement.plot(
                times,
                [p[2] if p[2] is not None else float("nan") for p in points],
                marker=".",
                label=f"v{version} shadow",
            )
    latency.set_ylabel("p99 latency (ms)")
    latency.legend(loc="upper left")
    agreement.set_ylabel("agreement with the primary")
    agreement.legend(loc="lower left")
    figure.suptitle(f"{report.model}: rollout since {report.since:%Y-%m-%d %H:%M} UTC")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
