"""The compose files as Compose itself resolves them (`docker compose config`, which needs no
engine): the production topology's rules, and the overrides that must change nothing but what
they are for."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.deploy


LOCAL_ONLY_KEYS = {"image", "build", "pull_policy"}


def resolved(*overrides: str, **env: str) -> dict[str, Any]:
    options = [f"--{name}" for name in overrides]
    result = subprocess.run(
        [str(ROOT / "scripts" / "stack"), *options, "compose", "config", "--format", "json"],
        env={**os.environ, "TORCHDOCK_ENV_FILE": os.devnull, "SECRETS_DIR": "/run/test-secrets",
             "TORCHDOCK_IMAGE": "registry.example/torchdock:1.2.3", **env},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def without(service: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    return {k: v for k, v in service.items() if k not in keys}


def test_the_local_override_changes_only_where_images_come_from() -> None:
    production, local = resolved(), resolved("local")
    for part in ("name", "networks", "volumes", "secrets"):
        assert local[part] == production[part], part
    # cAdvisor cannot be built from Debian: locally it sits in a profile that is never enabled.
    assert set(production["services"]) - set(local["services"]) == {"cadvisor"}
    for name, service in local["services"].items():
        assert without(service, LOCAL_ONLY_KEYS) == without(
            production["services"][name], LOCAL_ONLY_KEYS
        ), name
        assert service["pull_policy"] == "never", name
    assert local["services"]["api"]["image"] == production["services"]["api"]["image"]


def test_production_images_are_pinned_by_digest() -> None:
    every_profile = resolved(COMPOSE_PROFILES="dashboards,cadvisor")["services"]
    assert {"grafana", "cadvisor", "alertmanager"} <= set(every_profile)
    # db-admin runs the api's image: whichever release TORCHDOCK_IMAGE names.
    assert every_profile["db-admin"]["image"] == every_profile["api"]["image"]
    for name, service in every_profile.items():
        if name not in {"api", "db-admin"}:
            assert "@sha256:" in service["image"] and ":" in service["image"].split("@")[0], name


def test_production_rules() -> None:
    services = resolved()["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx", "prometheus"}
    assert [p["host_ip"] for p in services["prometheus"]["ports"]] == ["127.0.0.1"]
    assert services["api"]["deploy"]["replicas"] == 3
    # Runs to completion at each `up` (the migrations): its health is its exit status.
    one_shots = {"db-admin"}
    for name, service in services.items():
        assert "container_name" not in service, name
        limits = service["deploy"]["resources"]["limits"]
        assert limits["cpus"] and limits["memory"], name
        assert service["logging"]["options"]["max-size"], name
        assert service["restart"] == ("on-failure:5" if name in one_shots else "unless-stopped")
        assert service["read_only"] is True, name
        assert "no-new-privileges:true" in service["security_opt"], name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "completed_successfully" if dependency in one_shots else "healthy"
            assert condition["condition"] == f"service_{expected}", name
        if name not in {"nginx-exporter", *one_shots}:  # nginx-exporter: FROM scratch (README)
            assert service["healthcheck"]["test"], name
    # Finding 9: the api's role owned the database. It is a member of torchdock_app now, and
    # only db-admin has the owner's password.
    secrets = {name: {s["source"] for s in service.get("secrets", [])}
               for name, service in services.items()}  # fmt: skip
    owners = {name for name, held in secrets.items() if "db_owner_password" in held}
    assert owners == {"db-admin", "postgres"}
    assert services["api"]["environment"]["DB_AUTO_UPGRADE"] == "false"


def test_what_the_api_trusts_and_shares() -> None:
    config = resolved()
    services = config["services"]
    # Finding 9: FORWARDED_ALLOW_IPS was "*", so every container that reaches port 8000 could
    # name the client. It is nginx's fixed address, which Docker never hands to another.
    nginx_address = ipaddress.ip_address(services["nginx"]["networks"]["frontend"]["ipv4_address"])
    assert services["api"]["environment"]["FORWARDED_ALLOW_IPS"] == str(nginx_address)
    (pool,) = config["networks"]["frontend"]["ipam"]["config"]
    assert nginx_address in ipaddress.ip_network(pool["subnet"])
    assert nginx_address not in ipaddress.ip_network(pool["ip_range"])
    # Finding 6: each replica's spool was its own anonymous volume, never replayed once the
    # replica was gone. They share one named volume now.
    (spool,) = [v for v in services["api"]["volumes"] if v["target"] == "/var/lib/torchdock/spool"]
    assert spool["type"] == "volume" and spool["source"] == "api-spool"
    # cAdvisor mounted all of /var/run; it needs Docker's socket only.
    cadvisor = {v["source"]: v for v in services["cadvisor"]["volumes"]}
    assert "/var/run" not in cadvisor and "/var/run/docker.sock" in cadvisor
    assert all(v["read_only"] for v in cadvisor.values())


def test_required_variables_fail_fast() -> None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "stack"), "compose", "config", "--quiet"],
        env={k: v for k, v in os.environ.items() if k != "TORCHDOCK_IMAGE"}
        | {"TORCHDOCK_ENV_FILE": os.devnull},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "set TORCHDOCK_IMAGE" in result.stderr


def test_the_gpu_override_reserves_gpus_for_the_cuda_image() -> None:
    production = resolved()
    gpu = resolved("gpu", TORCHDOCK_GPU_IMAGE="registry.example/torchdock:1.2.3-cuda")
    api = gpu["services"]["api"]
    assert api["image"] == "registry.example/torchdock:1.2.3-cuda"
    assert api["environment"]["DEVICE"] == "cuda"
    [device] = api["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    # Every replica of a service gets the same devices: one replica, on one named GPU.
    assert device["device_ids"] == ["0"] and api["deploy"]["replicas"] == 1
    assert api["deploy"]["resources"]["limits"]["memory"] == "8589934592"
    others = set(production["services"]) - {"api"}
    assert {n: gpu["services"][n] for n in others} == {n: production["services"][n] for n in others}


def test_the_secrets_are_files_outside_git() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", "compose/secrets/db_password", "compose/.env"],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert ignored.stdout.split() == ["compose/secrets/db_password", "compose/.env"]
    assert not Path(ROOT / "compose" / ".env.example").read_text().count("PASSWORD=")


def test_the_load_generator_runs_hardened_beside_the_stack() -> None:
    """The loadtest profile: Locust's master and workers, on the frontend network only, one-shot,
    with nothing published."""
    services = resolved(COMPOSE_PROFILES="loadtest", LOCUST_WORKERS="3")["services"]
    for name in ("locust-master", "locust-worker"):
        service = services[name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert service["restart"] == "no", name
        assert set(service["networks"]) == {"frontend"} and not service.get("ports"), name
        assert service["healthcheck"]["test"] and service["deploy"]["resources"]["limits"], name
    assert "--host=http://nginx:8080" in services["locust-master"]["command"]
    assert "--expect-workers=3" in services["locust-master"]["command"]
    assert services["locust-worker"]["deploy"]["replicas"] == 3
    assert "locust-master" not in resolved()["services"], "off unless asked for"


def test_the_models_override_mounts_a_polled_read_only_repository() -> None:
    production, models = resolved(), resolved("models")
    assert set(models["volumes"]) - set(production["volumes"]) == {"models"}
    api = models["services"]["api"]
    assert api["environment"]["MODEL_CONTROL"] == "poll"
    repository = next(v for v in api["volumes"] if v["target"] == "/opt/torchdock/models")
    assert (repository["type"], repository["source"], repository["read_only"]) == (
        "volume",
        "models",
        True,
    )
    for name, service in models["services"].items():
        if name != "api":
            assert service == production["services"][name], name
    changed = {k for k in api if api[k] != production["services"]["api"].get(k)}
    assert changed == {"environment", "volumes"}
    bind = resolved("models", MODEL_REPOSITORY_TYPE="bind", MODEL_REPOSITORY_SOURCE="/srv/models")
    mount = next(v for v in bind["services"]["api"]["volumes"] if v["type"] == "bind")
    assert (mount["source"], mount["read_only"]) == ("/srv/models", True)
