"""All runtime settings, read once from the environment (and an optional `.env`)."""

from __future__ import annotations

import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from psycopg.conninfo import make_conninfo
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from service.keys.rate_limit import check_rate_limit
from service.rollouts.policy import RoutingPolicy
from service.runtime.version_policy import VersionPolicy

Precision = Literal["auto", "fp32", "fp16", "bf16"]
RuntimeSetting = Literal["auto", "eager", "compiled", "onnx"]
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ModelOverrides(BaseModel):
    """Per-model settings that take precedence over the manifest's defaults."""

    model_config = {"extra": "forbid"}

    precision: Precision | None = None
    runtime: RuntimeSetting | None = None
    batching: bool | None = None
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] | None = None
    cache: bool | None = None
    cache_ttl_s: Annotated[int, Field(ge=1)] | None = None
    cache_max_value_bytes: Annotated[int, Field(ge=64)] | None = None
    version_policy: str | None = None
    routing: RoutingPolicy | None = None

    @field_validator("version_policy")
    @classmethod
    def _check_policy(cls, value: str | None) -> str | None:
        if value is not None:
            VersionPolicy.parse(value)
        return value


class Settings(BaseSettings):
    # Each field's docstring is its description: docs/configuration.md renders its table from
    # them (scripts/lib/docs_hooks.py), so the reference cannot drift from the code.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    # Models
    model_repository: Path = Path("model-repository")
    """directory of `<model>/<version>/{manifest.json, model.pt2}`"""
    models: list[str] = Field(default_factory=list)
    """JSON list of the models to serve (empty: every model in the repository); readiness requires
    each of them
    """
    device: str = "auto"
    """`auto` (CUDA when available, else CPU), `cpu`, `cuda`, `cuda:N`; `cuda` without a GPU fails
    startup
    """
    precision: Precision = "auto"
    """`auto`, `fp32`, `fp16` (CUDA only), `bf16`; `auto` takes the fastest precision that the
    hardware accelerates and that meets the model's accuracy bound in its manifest, else the
    manifest's default
    """
    runtime: RuntimeSetting = "auto"
    """`eager`, `compiled`, `onnx` or `auto`: a version's compiled (AOTInductor) variant where
    the manifest has one, the CPU and torch fit it, and the version is vouched for
    (`MODEL_TRUST`, or `ALLOW_PICKLED_ARTIFACTS`); its ONNX variant (fp32) where the manifest has
    one and ONNX Runtime is installed; `auto` times each usable one and eager at load and keeps
    the fastest. Per model:
    `MODEL_SETTINGS.<m>.runtime`. See [docs/models.md](models.md#compiled-variants-runtime)
    """
    model_settings: dict[str, ModelOverrides] = Field(default_factory=dict)
    """JSON per model: `{"digits": {"precision": "fp32", "batching": true, "max_batch_size": 64,
    "max_batch_delay_ms": 2}}`
    """
    # As Triton's --model-control-mode.
    model_control: Literal["none", "poll", "explicit"] = "none"
    """`none`, `poll` (rescan every `MODEL_POLL_S`, default 10) or `explicit` (the repository API
    loads and unloads)
    """
    model_poll_s: Annotated[float, Field(gt=0)] = 10.0
    """with `MODEL_CONTROL=poll`, seconds between two scans of the repository"""
    model_version_policy: str = "all"
    """`all`, `latest:N` or `specific:1,3` (per model: `MODEL_SETTINGS.<m>.version_policy`)"""
    model_control_dir: Path | None = None
    """where one server's workers share the explicitly loaded models; unset: `torchdock serve`
    makes one
    """
    runtime_choice_dir: Path | None = None
    """where one server's workers share what `RUNTIME=auto` chose, so that the first to load a
    version times the runtimes and the others serve its choice; unset: `torchdock serve` makes
    one
    """
    model_trust: Literal["none", "digest-pinned", "signed"] = "none"
    """`digest-pinned` (with `MODEL_DIGESTS_FILE`) or `signed` (with `MODEL_TRUST_KEY_FILE`, an
    Ed25519 public key)
    """
    model_digests_file: Path | None = None
    """with `MODEL_TRUST=digest-pinned`: `sha256sum` lines of the allowed manifests (`torchdock
    trust digests REPO` prints them), kept outside the repository
    """
    model_trust_key_file: Path | None = None
    """with `MODEL_TRUST=signed`: the Ed25519 public key (base64, as `torchdock trust keygen`
    writes it)
    """
    allow_pickled_artifacts: bool = False
    """load artifacts that can run code when loaded (pickled weights, compiled libraries)"""

    # Rollouts
    routing_refresh_s: Annotated[float, Field(gt=0, le=60)] = 2.0
    """how often each worker rereads the stored routing policies (canary, shadow): every
    worker and replica follows a change within this"""
    shadow_queue_size: Annotated[int, Field(ge=1, le=10_000)] = 16
    """requests that may wait per worker for their shadow version; beyond, a shadow request is
    dropped (and counted), never waited for"""
    shadow_max_busy: Annotated[float, Field(gt=0, le=1)] = 0.1
    """the share of time each worker's shadow process may spend computing: a shadow that needs
    more gets fewer requests (the rest are dropped and counted), so that the primary keeps its
    CPU"""
    shadow_cpus: Annotated[int, Field(ge=0)] = 0
    """how many of the server's CPUs (the highest-numbered of its affinity mask) are kept for the
    shadow processes: the workers serve on the others, so that a slow shadow cannot take the
    primary's cores; 0: shadows run on any CPU, at the lowest priority (see
    [Rollouts](rollouts.md#what-a-shadow-costs))"""

    # Batching and admission control
    # 0: a batch is whatever queued while the previous one computed, as in Triton's default.
    # Waiting for more only added latency in the bench (concurrency 1: 108 req/s at 0 ms, 85
    # at 2 ms; equal from 8 up). A GPU model with a costly launch may want a few ms.
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    """how long a batch waits for more requests, unless the manifest or `MODEL_SETTINGS` says
    otherwise; at 0 a batch is whatever queued while the previous one computed (see
    Performance)
    """
    max_queue_size: Annotated[int, Field(ge=1)] = 512
    """instances that may wait per model version; beyond that, 429"""
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    """default deadline of a prediction"""
    max_request_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    """the largest `X-Request-Timeout` a client may ask for"""
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    """request body limit (413 beyond)"""

    # Server
    host: str = "127.0.0.1"
    """the address `torchdock serve` listens on"""
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    """the port `torchdock serve` listens on"""
    workers: Annotated[int, Field(ge=1)] | None = None
    """gunicorn workers, each loading every model; unset: one per CPU up to 4 on CPU, and 1 when a
    GPU is present (see [Performance](performance.md))
    """
    torch_threads: Annotated[int, Field(ge=1)] | None = None
    """intra-op threads per worker; unset: CPUs ÷ workers, where CPUs respect the affinity mask
    and the cgroup quota
    """
    # Image decoding, off the event loop; one thread leaves the other cores to torch.
    decode_threads: Annotated[int, Field(ge=1, le=64)] = 1
    """threads per worker that decode images and count text tokens, off the event loop"""
    worker_timeout_s: Annotated[int, Field(ge=1)] = 120
    """gunicorn kills a worker silent for this long"""
    graceful_timeout_s: Annotated[int, Field(ge=1)] = 30
    """time to finish in-flight requests after SIGTERM"""
    keepalive_s: Annotated[int, Field(ge=1)] = 5
    """HTTP keep-alive"""
    worker_tmp_dir: Path | None = None
    """where gunicorn's workers touch their heartbeat files; unset: `/dev/shm` where it exists
    (the images use `/tmp`, a tmpfs in compose)
    """
    # nginx bounds the request head in front; these bound it at the port itself (8000).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    """a request's line and headers at most; beyond, 431"""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """how long a request's head may take to arrive; beyond, 408"""
    drain_delay_s: Annotated[float, Field(ge=0)] = 0.0
    """after SIGTERM, keep accepting (with readiness failing) this long so load balancers stop
    sending first
    """
    forwarded_allow_ips: str = "127.0.0.1"
    """proxies trusted for `X-Forwarded-For`"""
    replica_id: str = Field(
        default_factory=lambda: os.uname().nodename,
        json_schema_extra={"documented_default": "the hostname"},
    )
    """reported in `X-Replica-ID`"""

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """`DEBUG`, `INFO`, `WARNING`, `ERROR`"""
    log_format: Literal["json", "text"] = "json"
    """`json` lines (with `request_id`) or `text`"""

    # Optional backends: absent means "not configured", never an error.
    redis_url: SecretStr | None = None
    """the prediction cache (secret: masked); unset means no cache"""
    redis_password_file: Path | None = None
    """a file holding the Redis password (a Docker or Kubernetes secret), put into `REDIS_URL`
    (whose user name, if any, it goes with), so that the password is in neither the URL nor the
    environment; a URL that holds a password too stops startup
    """
    redis_timeout_ms: Annotated[float, Field(gt=0)] = 50.0
    """timeout of every Redis call; a slow Redis costs at most this"""
    cache_ttl_s: Annotated[int, Field(ge=1)] = 3600
    """lifetime of a cache entry (per model: `MODEL_SETTINGS.<m>.cache_ttl_s`; `cache: false`
    turns it off for a model)
    """
    cache_max_value_bytes: Annotated[int, Field(ge=64)] = 64 * 1024
    """predictions larger than this are not cached (per model:
    `MODEL_SETTINGS.<m>.cache_max_value_bytes`)
    """
    cache_breaker_failures: Annotated[int, Field(ge=1)] = 3
    """failures in a row that open the cache's circuit breaker"""
    cache_breaker_reset_s: Annotated[float, Field(gt=0)] = 5.0
    """how long the open breaker waits before it probes Redis again"""
    database_url: SecretStr | None = None
    """the prediction log (secret: masked); unset means no log"""
    database_password_file: Path | None = None
    """a file holding the database password (a Docker or Kubernetes secret), merged into
    `DATABASE_URL`'s connection, so that the password is in neither the URL nor the environment
    """
    db_auto_upgrade: bool = True
    """apply schema migrations at startup (and when Postgres comes back)"""
    log_queue_size: Annotated[int, Field(ge=1)] = 10_000
    """rows waiting in memory per worker; beyond that, rows go to the spool"""
    log_payloads: bool = False
    """also store request and response bodies in the prediction log, capped at
    `LOG_PAYLOAD_MAX_BYTES`
    """
    log_payload_max_bytes: Annotated[int, Field(ge=0)] = 4096
    """the cap on a stored body (the cap is stored in each row)"""
    spool_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / "torchdock-spool",
        json_schema_extra={"documented_default": "`$TMPDIR/torchdock-spool`"},
    )
    """where rows wait while Postgres is down; put it on a volume"""
    spool_max_bytes: int = Field(default=1024**3, ge=1024**2)
    """the spool directory's limit in bytes, across every worker sharing it; rows beyond it are
    counted as lost
    """
    prediction_lookup: bool = False
    """enable `GET /v1/predictions/{prediction_id}` and `GET /v1/predictions?request_id=` (needs
    `ADMIN_TOKEN`)
    """
    # API keys (`torchdock keys`, kept in Postgres): off in the embedded mode, required in the
    # compose stack. Health and server metadata stay open for probes; /metrics is the
    # network's to guard (nginx keeps it in).
    api_keys: Literal["off", "required"] = "off"
    """`required`: predictions (and model metadata) need an API key (see [API keys](api-keys.md));
    needs `DATABASE_URL`
    """
    api_keys_refresh_s: Annotated[float, Field(gt=0)] = 5.0
    """how often each worker rereads the keys table: a revoked key stops within this"""
    api_keys_protect_metadata: bool = True
    """model metadata and readiness (`/v1/models`, `/v2/models/...`) need a key too"""
    api_key_rate_limit: str | None = None
    """each key's limit unless it has its own, e.g. `50/second` (the stack: `100/second`)"""
    rate_limit_failure: Literal["open", "closed"] = "open"
    """while Redis cannot count: `open` lets keyed requests through, `closed` answers 503"""
    admin_token: SecretStr | None = None
    """bearer token for the admin endpoints and the repository API: at least 32 characters
    (`openssl rand -hex 32`); masked, compared in constant time
    """
    admin_token_file: Path | None = None
    """a file holding the admin token (a Docker or Kubernetes secret); not with `ADMIN_TOKEN`"""

    @model_validator(mode="before")
    @classmethod
    def _admin_token_from_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not data.get("admin_token_file"):
            return data
        if data.get("admin_token"):
            raise ValueError("ADMIN_TOKEN and ADMIN_TOKEN_FILE are both set")
        try:
            token = read_secret(Path(data["admin_token_file"]))
        except OSError as e:
            raise ValueError(f"ADMIN_TOKEN_FILE: {e.strerror}") from None
        return {**data, "admin_token": token}

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        # A short token falls to guessing; the admin routes load models and read payloads.
        if value is not None and len(value.get_secret_value()) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be at least {MIN_ADMIN_TOKEN_LENGTH} characters"
                " (e.g. `openssl rand -hex 32`)"
            )
        return value

    @field_validator("model_version_policy")
    @classmethod
    def _check_version_policy(cls, value: str) -> str:
        VersionPolicy.parse(value)
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_PATTERN.match(value):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator(
        "database_password_file",
        "redis_password_file",
        "model_digests_file",
        "model_trust_key_file",
    )
    @classmethod
    def _check_password_file(cls, value: Path | None) -> Path | None:
        if value is not None and not os.access(value, os.R_OK):
            raise ValueError(f"{value} is not a readable file")
        return value

    @model_validator(mode="after")
    def _one_redis_password(self) -> Settings:
        url = self.redis_url.get_secret_value() if self.redis_url else ""
        if self.redis_password_file is not None and urlsplit(url).password is not None:
            raise ValueError("REDIS_URL holds a password and REDIS_PASSWORD_FILE names one")
        return self

    @model_validator(mode="after")
    def _trust_needs_its_file(self) -> Settings:
        if self.model_trust == "digest-pinned" and self.model_digests_file is None:
            raise ValueError("MODEL_TRUST=digest-pinned needs MODEL_DIGESTS_FILE")
        if self.model_trust == "signed" and self.model_trust_key_file is None:
            raise ValueError("MODEL_TRUST=signed needs MODEL_TRUST_KEY_FILE")
        return self

    @field_validator("api_key_rate_limit")
    @classmethod
    def _check_rate_limit(cls, value: str | None) -> str | None:
        if value is not None:
            check_rate_limit(value)
        return value

    @model_validator(mode="after")
    def _keys_need_a_database(self) -> Settings:
        if self.api_keys == "required" and self.database_url is None:
            raise ValueError("API_KEYS=required needs DATABASE_URL (the keys are kept there)")
        return self

    @model_validator(mode="after")
    def _lookup_needs_a_token(self) -> Settings:
        if self.prediction_lookup and self.admin_token is None:
            raise ValueError("PREDICTION_LOOKUP needs ADMIN_TOKEN")
        return self

    def database_conninfo(self) -> str | None:
        """DATABASE_URL, with the password from DATABASE_PASSWORD_FILE when one is given."""
        if self.database_url is None:
            return None
        url = self.database_url.get_secret_value()
        if self.database_password_file is None:
            return url
        return make_conninfo(url, password=read_secret(self.database_password_file))

    def redis_connection_url(self) -> str | None:
        """REDIS_URL, with the password from REDIS_PASSWORD_FILE when one is given."""
        if self.redis_url is None:
            return None
        url = self.redis_url.get_secret_value()
        if self.redis_password_file is None:
            return url
        password = quote(read_secret(self.redis_password_file), safe="")
        parts = urlsplit(url)
        user, _, host = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    def overrides_for(self, model: str) -> ModelOverrides:
        return self.model_settings.get(model, ModelOverrides())

    def effective_workers(self) -> int:
        """Measured on 2 cores: one single-threaded worker per core beats one worker with two
        torch threads (a busy event loop makes one OpenMP thread a straggler). Beyond
        MAX_AUTO_WORKERS, cores go to torch threads instead, so that batches stay large and
        memory stays bounded. One worker per GPU: batching already keeps the GPU busy."""
        if self.workers is not None:
            return self.workers
        if self.device.startswith("cuda") or (self.device == "auto" and _gpu_present()):
            return 1
        return min(self.serving_cpus(), MAX_AUTO_WORKERS)

    def effective_torch_threads(self) -> int:
        """Intra-op threads per worker, so that workers together never oversubscribe the cores."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, self.serving_cpus() // self.effective_workers())

    def serving_cpus(self) -> int:
        """The CPUs the workers compute on: all but the ones kept for shadows."""
        return max(1, available_cpus() - self.shadow_cpus)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with every secret masked."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump(mode="json").items():
            secret = isinstance(getattr(self, name), SecretStr)
            shown[name] = "********" if secret else value
        shown["effective_workers"] = self.effective_workers()
        shown["effective_torch_threads"] = self.effective_torch_threads()
        return shown


MAX_AUTO_WORKERS = 4
MIN_ADMIN_TOKEN_LENGTH = 32


def _gpu_present() -> bool:
    # Deliberately no torch.cuda call: this runs in the gunicorn master, which must not
    # initialise CUDA before it forks.
    return Path("/dev/nvidiactl").exists()


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, and the cgroup quota inside containers."""
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, quota)) if quota else cpus


def _cgroup_cpu_quota() -> int | None:
    candidates = (
        (Path("/sys/fs/cgroup/cpu.max"), None),
        (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")),
    )
    for quota_path, period_path in candidates:
        try:
            raw = quota_path.read_text().split()
            if period_path is None:
                if raw[0] == "max":
                    return None
                quota, period = int(raw[0]), int(raw[1])
            else:
                quota, period = int(raw[0]), int(period_path.read_text())
                if quota <= 0:
                    return None
            return max(1, -(-quota // period))
        except (OSError, ValueError, IndexError):
            continue
    return None


def read_secret(path: Path) -> str:
    """A secret file's value, without the line ending an editor or `echo` may have added."""
    return path.read_text().rstrip("\r\n")


class ConfigError(Exception):
    """Raised with one clear line describing every invalid setting."""


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except SettingsError as e:
        # Raised while reading the environment, e.g. a JSON-valued variable that is not JSON.
        field = re.search(r'field "(\w+)"', str(e))
        name = field.group(1).upper() if field else "a setting"
        raise ConfigError(f"invalid configuration: {name}: not valid JSON") from e
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper() or 'settings'}: {err['msg']}"
            for err in e.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from e


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
