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
from service.runtime.version_policy import VersionPolicy

Precision = Literal["auto", "fp32", "fp16", "bf16"]
RuntimeSetting = Literal["auto", "eager", "compiled"]
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

    @field_validator("version_policy")
    @classmethod
    def _check_policy(cls, value: str | None) -> str | None:
        if value is not None:
            VersionPolicy.parse(value)
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # Models
    model_repository: Path = Path("model-repository")
    models: list[str] = Field(
        default_factory=list,
        description="Models to load (JSON list); empty means every model in the repository.",
    )
    device: str = "auto"
    precision: Precision = "auto"
    runtime: RuntimeSetting = Field(
        default="auto",
        description="eager, compiled (a version's AOTInductor variant where usable) or auto"
        " (the faster of the two on this machine, timed at load)",
    )
    model_settings: dict[str, ModelOverrides] = Field(default_factory=dict)
    # none: what is there at startup, for good; poll: rescan every MODEL_POLL_S; explicit:
    # the repository API loads and unloads (Triton's --model-control-mode).
    model_control: Literal["none", "poll", "explicit"] = "none"
    model_poll_s: Annotated[float, Field(gt=0)] = 10.0
    model_version_policy: str = Field(
        default="all", description="all, latest:N or specific:V[,V...]; per model in MODEL_SETTINGS"
    )
    model_control_dir: Path | None = Field(
        default=None,
        description="Where the workers of one server share the explicitly loaded models;"
        " `torchdock serve` makes one when unset.",
    )
    model_trust: Literal["none", "digest-pinned", "signed"] = "none"
    model_digests_file: Path | None = Field(
        default=None,
        description="sha256sum lines of the allowed manifests (MODEL_TRUST=digest-pinned),"
        " kept outside the model repository",
    )
    model_trust_key_file: Path | None = Field(
        default=None,
        description="The Ed25519 public key for MODEL_TRUST=signed (base64, as"
        " `torchdock trust keygen` writes it)",
    )
    allow_pickled_artifacts: bool = Field(
        default=False,
        description="Load artifacts that can run code when loaded (pickled weights, compiled"
        " libraries). Only for a repository whose every writer you trust.",
    )

    # Batching and admission control
    # 0: a batch is whatever queued while the previous one computed, as in Triton's default.
    # Waiting for more only added latency in the bench (concurrency 1: 108 req/s at 0 ms, 85
    # at 2 ms; equal from 8 up). A GPU model with a costly launch may want a few ms.
    max_batch_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    max_queue_size: Annotated[int, Field(ge=1)] = 512
    request_timeout_s: Annotated[float, Field(gt=0)] = 10.0
    max_request_timeout_s: Annotated[float, Field(gt=0)] = 60.0
    max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024

    # Server
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="gunicorn workers; unset means effective_workers()"
    )
    torch_threads: Annotated[int, Field(ge=1)] | None = None
    # Image decoding, off the event loop; one thread leaves the other cores to torch.
    decode_threads: Annotated[int, Field(ge=1, le=64)] = 1
    worker_timeout_s: Annotated[int, Field(ge=1)] = 120
    graceful_timeout_s: Annotated[int, Field(ge=1)] = 30
    keepalive_s: Annotated[int, Field(ge=1)] = 5
    worker_tmp_dir: Path | None = Field(
        default=None,
        description="Where gunicorn's workers touch their heartbeat files; /dev/shm where it"
        " exists, since a heartbeat on a slow disk can stall a worker",
    )
    # nginx bounds the request head in front; these bound it at the port itself (8000).
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="the request line and headers, at most (431)"
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="how long a request head may take to arrive (408)"
    )
    drain_delay_s: Annotated[float, Field(ge=0)] = 0.0
    forwarded_allow_ips: str = "127.0.0.1"
    replica_id: str = Field(default_factory=lambda: os.uname().nodename)

    # Observability
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    # Optional backends: absent means "not configured", never an error.
    redis_url: SecretStr | None = None
    redis_password_file: Path | None = Field(
        default=None,
        description="A file holding the Redis password (a Docker or Kubernetes secret), "
        "so that the password is in neither REDIS_URL nor the environment.",
    )
    redis_timeout_ms: Annotated[float, Field(gt=0)] = 50.0
    cache_ttl_s: Annotated[int, Field(ge=1)] = 3600
    cache_max_value_bytes: Annotated[int, Field(ge=64)] = 64 * 1024
    cache_breaker_failures: Annotated[int, Field(ge=1)] = 3
    cache_breaker_reset_s: Annotated[float, Field(gt=0)] = 5.0
    database_url: SecretStr | None = None
    database_password_file: Path | None = Field(
        default=None,
        description="A file holding the database password (a Docker or Kubernetes secret), "
        "so that the password is in neither DATABASE_URL nor the environment.",
    )
    db_auto_upgrade: bool = True
    log_queue_size: Annotated[int, Field(ge=1)] = 10_000
    log_payloads: bool = False
    log_payload_max_bytes: Annotated[int, Field(ge=0)] = 4096
    spool_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "torchdock-spool")
    spool_max_bytes: int = Field(
        default=1024**3,
        ge=1024**2,
        description="the whole spool directory's limit (shared by the replicas that mount it); "
        "rows beyond it are counted as lost, not written",
    )
    prediction_lookup: bool = False
    # API keys (`torchdock keys`, kept in Postgres): off in the embedded mode, required in the
    # compose stack. Health and server metadata stay open for probes; /metrics is the
    # network's to guard (nginx keeps it in).
    api_keys: Literal["off", "required"] = "off"
    api_keys_refresh_s: Annotated[float, Field(gt=0)] = 5.0
    api_keys_protect_metadata: bool = True
    api_key_rate_limit: str | None = Field(
        default=None, description="each key's limit unless its own is set, e.g. '50/second'"
    )
    rate_limit_failure: Literal["open", "closed"] = Field(
        default="open", description="what happens to keyed requests while Redis cannot count"
    )
    admin_token: SecretStr | None = None
    admin_token_file: Path | None = Field(
        default=None,
        description="A file holding the admin token (a Docker or Kubernetes secret), so that"
        " the token is not in the environment.",
    )

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
        return min(available_cpus(), MAX_AUTO_WORKERS)

    def effective_torch_threads(self) -> int:
        """Intra-op threads per worker, so that workers together never oversubscribe the cores."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, available_cpus() // self.effective_workers())

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
