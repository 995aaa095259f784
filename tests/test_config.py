"""Settings: read from the environment, refused with one clear line when wrong, secrets masked."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from psycopg.conninfo import conninfo_to_dict

from service import config
from service.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting comes from the machine running the tests: no stray env var, no `.env` file."""
    monkeypatch.chdir(tmp_path)
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


def refusal(**overrides: object) -> str:
    with pytest.raises(ConfigError) as refused:
        load_settings(**overrides)
    message = str(refused.value)
    assert "\n" not in message, "a configuration error must be one line"
    return message


def test_defaults_load_without_any_environment() -> None:
    settings = load_settings()

    assert settings.device == "auto"
    assert settings.port == 8000
    assert settings.workers is None  # automatic: see effective_workers()
    assert settings.models == []
    assert settings.redis_url is None
    assert settings.database_url is None
    assert settings.admin_token is None


def test_settings_are_read_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVICE", "cuda:1")
    monkeypatch.setenv("PORT", "9100")
    monkeypatch.setenv("WORKERS", "3")
    monkeypatch.setenv("MODELS", '["digits", "minilm"]')
    monkeypatch.setenv("PRECISION", "bf16")
    monkeypatch.setenv("MODEL_SETTINGS", '{"digits": {"batching": false, "max_batch_size": 16}}')
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/0")

    settings = load_settings()

    assert settings.device == "cuda:1"
    assert settings.port == 9100
    assert settings.workers == 3
    assert settings.models == ["digits", "minilm"]
    assert settings.precision == "bf16"
    assert settings.overrides_for("digits").batching is False
    assert settings.overrides_for("digits").max_batch_size == 16
    assert settings.overrides_for("minilm").max_batch_size is None
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://cache:6379/0"


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("PORT=9200\nLOG_LEVEL=DEBUG\n")

    settings = load_settings()

    assert settings.port == 9200
    assert settings.log_level == "DEBUG"


def test_an_environment_variable_wins_over_the_dotenv_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("PORT=9200\n")
    monkeypatch.setenv("PORT", "9300")

    assert load_settings().port == 9300


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("DEVICE", "gpu", "DEVICE"),
        ("DEVICE", "cuda:x", "DEVICE"),
        ("PORT", "0", "PORT"),
        ("PORT", "70000", "PORT"),
        ("WORKERS", "0", "WORKERS"),
        ("PRECISION", "int8", "PRECISION"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
        ("MAX_BATCH_DELAY_MS", "5000", "MAX_BATCH_DELAY_MS"),
        ("MODEL_SETTINGS", '{"digits": {"bogus": 1}}', "MODEL_SETTINGS.DIGITS.BOGUS"),
        ("MODEL_SETTINGS", '{"digits": {"max_batch_size": 0}}', "MODEL_SETTINGS.DIGITS"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line_that_names_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)

    message = refusal()

    assert message.startswith("invalid configuration: ")
    assert f"{named}" in message


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MODEL_SETTINGS", "digits=fp16"),
        ("MODELS", "digits,minilm"),
    ],
)
def test_malformed_json_in_a_setting_is_refused_as_a_config_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    # JSON-valued settings are parsed by the settings source, before validation: a typo there
    # must still fail startup with one clear line, not a traceback.
    monkeypatch.setenv(variable, value)

    assert variable in refusal()


def test_overrides_are_validated_like_the_environment() -> None:
    message = refusal(device="gpu", port=0)

    assert "DEVICE" in message
    assert "PORT" in message


def test_masked_hides_every_secret_value() -> None:
    settings = load_settings(
        redis_url="redis://:hunter2@cache:6379/0",
        database_url="postgresql://app:s3cret@db/app",
        admin_token="let-me-in-let-me-in-let-me-in-now!",
    )

    shown = settings.masked()

    for name in ("redis_url", "database_url", "admin_token"):
        assert shown[name] == "********"
    for secret in ("hunter2", "s3cret", "let-me-in-let-me-in-let-me-in-now!"):
        assert secret not in repr(shown)
    assert shown["port"] == 8000
    assert shown["device"] == "auto"


def test_masked_hides_secrets_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "from-the-env-from-the-env-from-the-env")

    shown = load_settings().masked()

    assert shown["admin_token"] == "********"
    assert "from-the-env" not in repr(shown)


def test_masked_shows_absent_secrets_as_absent() -> None:
    shown = load_settings().masked()

    assert shown["redis_url"] is None
    assert shown["database_url"] is None
    assert shown["admin_token"] is None


@pytest.mark.parametrize(
    ("cpus", "workers", "threads"),
    [(8, 1, 8), (8, 2, 4), (8, 3, 2), (2, 4, 1), (1, 1, 1), (4, 16, 1)],
)
def test_effective_torch_threads_shares_the_cpus_between_workers(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int, threads: int
) -> None:
    monkeypatch.setattr(config, "available_cpus", lambda: cpus)

    settings = load_settings(workers=workers)

    assert settings.effective_torch_threads() == threads
    assert settings.masked()["effective_torch_threads"] == threads


@pytest.mark.parametrize(
    ("cpus", "device", "gpu", "workers", "threads"),
    [
        (2, "cpu", False, 2, 1),
        (1, "auto", False, 1, 1),
        (8, "cpu", False, 4, 2),
        (16, "auto", False, 4, 4),
        (16, "cuda", False, 1, 16),
        (16, "auto", True, 1, 16),
    ],
)
def test_automatic_workers_and_threads(
    monkeypatch: pytest.MonkeyPatch, cpus: int, device: str, gpu: bool, workers: int, threads: int
) -> None:
    monkeypatch.setattr(config, "available_cpus", lambda: cpus)
    monkeypatch.setattr(config, "_gpu_present", lambda: gpu)

    settings = load_settings(device=device)

    assert settings.effective_workers() == workers
    assert settings.effective_torch_threads() == threads


def test_an_explicit_torch_threads_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "available_cpus", lambda: 16)
    monkeypatch.setenv("TORCH_THREADS", "3")

    assert load_settings(workers=8).effective_torch_threads() == 3


def test_available_cpus_is_at_least_one() -> None:
    assert config.available_cpus() >= 1


def test_the_database_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "postgres_password"
    secret.write_text("s3cret 'quoted'\n")
    settings = load_settings(
        database_url="postgresql://torchdock@postgres:5432/torchdock?connect_timeout=5",
        database_password_file=secret,
    )
    assert conninfo_to_dict(settings.database_conninfo() or "") == {
        "user": "torchdock",
        "host": "postgres",
        "port": "5432",
        "dbname": "torchdock",
        "connect_timeout": "5",
        "password": "s3cret 'quoted'",
    }
    assert "s3cret" not in str(settings.masked())


def test_without_a_password_file_the_url_is_used_as_given() -> None:
    url = "postgresql://u:p@db/x"
    assert load_settings(database_url=url).database_conninfo() == url
    assert load_settings().database_conninfo() is None


def test_an_unreadable_password_file_stops_startup(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DATABASE_PASSWORD_FILE: .*not a readable file"):
        load_settings(database_password_file=tmp_path / "missing")


def test_the_redis_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("p@ss/word:%\n")
    settings = load_settings(redis_url="redis://cache@redis:6379/0", redis_password_file=secret)
    url = settings.redis_connection_url() or ""
    assert url == "redis://cache:p%40ss%2Fword%3A%25@redis:6379/0"
    assert urlsplit(url).hostname == "redis" and unquote(urlsplit(url).password or "") == (
        "p@ss/word:%"
    )
    assert "p@ss" not in str(settings.masked())
    no_user = load_settings(redis_url="redis://redis:6379/0", redis_password_file=secret)
    assert no_user.redis_connection_url() == "redis://:p%40ss%2Fword%3A%25@redis:6379/0"


def test_without_a_redis_password_file_the_url_is_used_as_given() -> None:
    url = "redis://:inline@redis:6379/0"
    assert load_settings(redis_url=url).redis_connection_url() == url
    assert load_settings().redis_connection_url() is None


def test_a_redis_password_given_twice_stops_startup(tmp_path: Path) -> None:
    secret = tmp_path / "redis_password"
    secret.write_text("x")
    with pytest.raises(ConfigError, match="REDIS_URL holds a password and REDIS_PASSWORD_FILE"):
        load_settings(redis_url="redis://:inline@redis:6379/0", redis_password_file=secret)
    with pytest.raises(ConfigError, match=r"REDIS_PASSWORD_FILE: .*not a readable file"):
        load_settings(redis_password_file=tmp_path / "missing")


@pytest.mark.parametrize("token", ["x", "short-but-not-32-characters"])
def test_a_short_admin_token_stops_startup(token: str) -> None:
    # One-character tokens were accepted once (issue 18, finding 9).
    with pytest.raises(ConfigError, match=r"ADMIN_TOKEN: .*at least 32 characters"):
        load_settings(_env_file=None, admin_token=token)


def test_the_admin_token_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "admin_token"
    secret.write_text("a" * 40 + "\n")
    settings = load_settings(_env_file=None, admin_token_file=secret)
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == "a" * 40
    with pytest.raises(ConfigError, match="both set"):
        load_settings(_env_file=None, admin_token_file=secret, admin_token="b" * 40)
    with pytest.raises(ConfigError, match="ADMIN_TOKEN_FILE"):
        load_settings(_env_file=None, admin_token_file=tmp_path / "missing")


def test_gunicorn_takes_its_heartbeat_directory_from_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.server.gunicorn_app import TorchdockApplication

    monkeypatch.setenv("WORKER_TMP_DIR", str(tmp_path))
    application = TorchdockApplication(load_settings())
    assert application.cfg.worker_tmp_dir == str(tmp_path)
