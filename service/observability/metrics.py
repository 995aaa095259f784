"""Every Prometheus series the service exports, defined once.

Works in single-process mode and under gunicorn: when PROMETHEUS_MULTIPROC_DIR is set before
this module is imported, prometheus_client writes per-process files that /metrics aggregates.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from functools import lru_cache

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

_MODEL = ("model_name", "model_version")
# Latency buckets from 1 ms to 10 s: batching adds milliseconds, timeouts are seconds.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)

HTTP_REQUESTS = Counter(
    "torchdock_http_requests_total",
    "HTTP requests answered, by route template and status code.",
    ("method", "route", "status"),
)
HTTP_LATENCY = Histogram(
    "torchdock_http_request_duration_seconds",
    "Time from request start to response start, by route template.",
    ("method", "route"),
    buckets=_LATENCY_BUCKETS,
)
INFLIGHT = Gauge(
    "torchdock_inflight_requests",
    "HTTP requests being processed right now.",
    multiprocess_mode="livesum",
)
REQUEST_LATENCY = Histogram(
    "torchdock_inference_request_duration_seconds",
    "Total time of a prediction request, from decode to encoded response, whatever its status.",
    _MODEL,
    buckets=_LATENCY_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "torchdock_queue_wait_seconds",
    "Time a request waited in the batch queue before its forward pass started.",
    _MODEL,
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_LATENCY = Histogram(
    "torchdock_inference_duration_seconds",
    "Time of one batched forward pass, preprocessing and postprocessing included.",
    _MODEL,
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "torchdock_batch_size",
    "Instances per forward pass.",
    _MODEL,
    buckets=_BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "torchdock_queue_depth",
    "Instances waiting in the batch queue.",
    _MODEL,
    multiprocess_mode="livesum",
)
PREDICTION_REQUESTS = Counter(
    "torchdock_prediction_requests_total",
    "Prediction requests answered, by model version and status code; requests for a model "
    'that does not exist count under model_name="_unknown".',
    (*_MODEL, "status"),
)
REJECTIONS = Counter(
    "torchdock_rejected_requests_total",
    "Requests refused with 429 because the batch queue was full.",
    _MODEL,
)
TIMEOUTS = Counter(
    "torchdock_timeouts_total",
    "Requests answered 504 because their deadline passed.",
    _MODEL,
)
INSTANCES = Counter(
    "torchdock_instances_total",
    "Instances predicted.",
    _MODEL,
)
MODEL_LOAD_SECONDS = Gauge(
    "torchdock_model_load_seconds",
    "Seconds the last load of a model took, warm-up included.",
    _MODEL,
    multiprocess_mode="max",
)
MODEL_READY = Gauge(
    "torchdock_model_ready",
    "1 when the model version is loaded and warmed up in a live worker.",
    _MODEL,
    multiprocess_mode="livemax",
)
WORKERS_READY = Gauge(
    "torchdock_workers_ready",
    "Server workers that have loaded their models and accept connections.",
    multiprocess_mode="livesum",
)


# Rollouts: which version served a request and in what role, what the shadows did, and the
# policy each worker follows (livemin: a worker that lags behind a change shows).
_ROLE = (*_MODEL, "role")
ROUTED_REQUESTS = Counter(
    "torchdock_routed_requests_total",
    "Prediction requests by the version that served them, its role (primary or canary) and "
    "status code.",
    (*_ROLE, "status"),
)
ROUTED_LATENCY = Histogram(
    "torchdock_routed_request_duration_seconds",
    "Total time of a prediction request, by the version that served it and its role.",
    _ROLE,
    buckets=_LATENCY_BUCKETS,
)
SHADOW_PREDICTIONS = Counter(
    "torchdock_shadow_predictions_total",
    "Requests sent to a shadow version, by outcome: computed, dropped (the shadow queue was "
    "full), or failed.",
    (*_MODEL, "outcome"),
)
SHADOW_LATENCY = Histogram(
    "torchdock_shadow_duration_seconds",
    "Time a shadow version took to compute one request's instances.",
    _MODEL,
    buckets=_LATENCY_BUCKETS,
)
SHADOW_READY = Gauge(
    "torchdock_shadow_ready",
    "1 when every live worker's shadow process holds the shadow version a policy names, "
    "loaded and warmed up; 0 while one is loading it, or it failed to load.",
    _MODEL,
    multiprocess_mode="livemin",
)
SHADOW_AGREEMENT = Histogram(
    "torchdock_shadow_agreement",
    "Agreement of a shadow version with the primary on the same instances: top-1 agreement "
    "(classifiers) or mean cosine (embeddings), from 0 to 1; max abs diff for tensors.",
    (*_MODEL, "kind"),
    buckets=(0.0, 1e-6, 1e-4, 0.01, 0.1, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0),
)
CANARY_PERCENT = Gauge(
    "torchdock_routing_canary_percent",
    "The share of a model's unversioned requests that its canary version serves.",
    _MODEL,
    multiprocess_mode="livemax",
)
ROUTING_READ = Gauge(
    "torchdock_routing_policies_read_timestamp_seconds",
    "When the workers last read the stored routing policies (the oldest read of a live "
    "worker; 0 until each has read once): a worker that cannot read them falls behind.",
    multiprocess_mode="livemin",
)
ROUTING_REVISION = Gauge(
    "torchdock_routing_policy_revision",
    "The revision of a model's stored routing policy that the workers follow (the lowest).",
    ("model_name",),
    multiprocess_mode="livemin",
)
CANARY_ABORTS = Counter(
    "torchdock_canary_aborts_total",
    "Canaries that the guard aborted by itself, by reason (errors, latency).",
    (*_MODEL, "reason"),
)

CACHE_RESULTS = Counter(
    "torchdock_cache_instances_total",
    "Instances looked up in the prediction cache, by result (hit, miss).",
    (*_MODEL, "result"),
)
CACHE_ERRORS = Counter(
    "torchdock_cache_errors_total",
    "Redis calls that failed or timed out, by operation.",
    ("operation",),
)
CACHE_SKIPPED = Counter(
    "torchdock_cache_skipped_total",
    "Redis calls not made because the circuit breaker was open, by operation.",
    ("operation",),
)
CACHE_LATENCY = Histogram(
    "torchdock_cache_duration_seconds",
    "Latency of Redis calls, by operation.",
    ("operation",),
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
CACHE_BREAKER_STATE = Gauge(
    "torchdock_cache_breaker_state",
    "The cache circuit breaker: 0 closed, 1 open, 2 half-open (the worst live worker).",
    multiprocess_mode="livemax",
)
LOG_QUEUE_DEPTH = Gauge(
    "torchdock_prediction_log_queue_depth",
    "Prediction-log rows waiting in memory to be written.",
    multiprocess_mode="livesum",
)
LOG_ROWS = Counter(
    "torchdock_prediction_log_rows_total",
    "Prediction-log rows by outcome: written, spooled (to local disk), replayed (spool to DB), "
    "dead_letter (refused by Postgres), lost (refused by the spool too).",
    ("outcome",),
)
LOG_WRITE_ERRORS = Counter(
    "torchdock_prediction_log_write_errors_total",
    "Failed attempts to write prediction-log rows to Postgres.",
)
LOG_SPOOL_BYTES = Gauge(
    "torchdock_prediction_log_spool_bytes",
    "Bytes of prediction-log rows waiting in the spool directory for Postgres (all of it: "
    "every worker and replica that shares it reports the same directory).",
    multiprocess_mode="livemax",
)

API_KEYS_LOADED = Gauge(
    "torchdock_api_keys_loaded",
    "API keys in this worker's copy of the keys table, revoked and expired ones included.",
    multiprocess_mode="livemax",
)
API_KEY_REQUESTS = Counter(
    "torchdock_api_key_requests_total",
    "Keyed requests by key name (the first 200 keys; then _other) and outcome: allowed,"
    " rate_limited, forbidden (model not allowed), or unlimited (Redis could not count).",
    ("key", "outcome"),
)
API_KEY_REJECTIONS = Counter(
    "torchdock_api_key_rejections_total",
    "Requests refused before any key was known: missing, invalid (unknown, revoked, expired).",
    ("reason",),
)
# Key names are the operator's, yet a label set must stay bounded whatever is in the table.
_KEY_LABELS_MAX = 200
_key_labels: set[str] = set()


def api_key_requests(key_name: str, outcome: str) -> Counter:
    if key_name not in _key_labels:
        if len(_key_labels) >= _KEY_LABELS_MAX:
            key_name = "_other"
        else:
            _key_labels.add(key_name)
    return API_KEY_REQUESTS.labels(key_name, outcome)


@lru_cache(maxsize=1024)
def http_requests(method: str, route: str, status: int) -> Counter:
    """The labelled child, cached: `.labels()` costs a lock and a dict build per call."""
    return HTTP_REQUESTS.labels(method, route, str(status))


@lru_cache(maxsize=256)
def prediction_requests(model: str, version: str, status: int) -> Counter:
    return PREDICTION_REQUESTS.labels(model, version, str(status))


@lru_cache(maxsize=256)
def routed_requests(model: str, version: str, role: str, status: int) -> Counter:
    return ROUTED_REQUESTS.labels(model, version, role, str(status))


@lru_cache(maxsize=256)
def routed_latency(model: str, version: str, role: str) -> Histogram:
    return ROUTED_LATENCY.labels(model, version, role)


@lru_cache(maxsize=256)
def http_latency(method: str, route: str) -> Histogram:
    return HTTP_LATENCY.labels(method, route)


class _StartedProcessesCollector(multiprocess.MultiProcessCollector):
    """Skips the files of a worker that is starting right now.

    A worker creates its file empty and sizes it a moment later; prometheus_client reads an empty
    file as a struct error, and the whole scrape failed with a 500 while a worker (re)started.
    """

    def collect(self) -> Iterable[Metric]:
        files = glob.glob(os.path.join(self._path, "*.db"))
        merged: Iterable[Metric] = self.merge(  # type: ignore[no-untyped-call]
            [f for f in files if _has_header(f)], accumulate=True
        )
        return merged


def _has_header(path: str) -> bool:
    try:
        return os.path.getsize(path) >= 8
    except OSError:  # the worker's files were removed as it exited
        return False


def _registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        _StartedProcessesCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def render_latest() -> tuple[bytes, str]:
    """The exposition text for every live process (multiprocess mode) or this one."""
    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def collect(name: str) -> list[Metric]:
    """The series of one metric family, summed over every live process: what a scrape of this
    server would read."""
    return [m for m in _registry().collect() if m.name == name]
