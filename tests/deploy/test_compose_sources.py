"""compose.yml is the one source of the topology: stack.yml is rendered from it, and every other
file that must name one of its images or timings agrees with it. No engine needed."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from service.config import Settings
from tests.paths import ROOT

pytestmark = pytest.mark.deploy

COMPOSE = ROOT / "compose"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _render_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "render_stack", ROOT / "scripts" / "lib" / "render_stack.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m)", duration)
    assert match, duration
    return float(match[1]) * (60 if match[2] == "m" else 1)


def test_stack_yml_is_the_render_of_compose_yml() -> None:
    assert (COMPOSE / "stack.yml").read_text() == _render_stack().render(COMPOSE), (
        "compose/stack.yml is stale: run scripts/render-stack"
    )


def test_the_render_drops_what_the_stack_loader_refuses() -> None:
    stack = _load(COMPOSE / "stack.yml")
    assert "name" not in stack and stack["version"].startswith("3")
    for name, service in stack["services"].items():
        assert not set(service) & {"depends_on", "profiles", "security_opt", "restart"}, name
        assert "tmpfs" not in service, f"{name}: Swarm takes tmpfs as a mount"
        for volume in service.get("volumes", []):
            assert not str(volume).startswith("."), f"{name}: a checkout's file is a config"
    sources = {c["source"] for s in stack["services"].values() for c in s.get("configs", [])}
    assert sources == set(stack["configs"])
    for name in sources:
        assert (COMPOSE / stack["configs"][name]["file"]).is_file(), name


def test_the_stack_keeps_the_compose_topology() -> None:
    """Same services, images and healthchecks as compose.yml, except the optional ones."""
    stack = _load(COMPOSE / "stack.yml")["services"]
    compose = _load(COMPOSE / "compose.yml")["services"]
    optional = {"cadvisor", "grafana", "locust-master", "locust-worker", "db-admin"}
    assert set(stack) == set(compose) - optional
    for name, service in stack.items():
        if name == "api":  # required in both, from TORCHDOCK_IMAGE
            assert service["image"].startswith("${TORCHDOCK_IMAGE:?"), name
        else:
            assert service["image"] == compose[name]["image"], name
        assert service.get("healthcheck", {}).get("test") == compose[name].get(
            "healthcheck", {}
        ).get("test"), name
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name
        assert service["deploy"]["endpoint_mode"] == "dnsrr", name
    # As in compose, the api's role may not change the schema, and has no owner's password.
    assert stack["api"]["environment"]["DB_AUTO_UPGRADE"] == "false"
    assert "db_owner_password" not in stack["api"]["secrets"]
    assert (
        stack["api"]["environment"]["DRAIN_DELAY_S"]
        == compose["api"]["environment"]["DRAIN_DELAY_S"]
    )
    api = stack["api"]["deploy"]
    assert api["update_config"]["order"] == "start-first"
    assert api["update_config"]["failure_action"] == "rollback"


def test_every_other_pin_of_a_stack_image_is_compose_yml_s() -> None:
    pinned = {
        service["image"].split(":")[0]: service["image"]
        for service in _load(COMPOSE / "compose.yml")["services"].values()
        if "@sha256:" in service["image"]
    }
    ci = _load(ROOT / ".github" / "workflows" / "ci.yml")
    for job in ci["jobs"].values():
        for container in job.get("services", {}).values():
            image = container["image"]
            assert image == pinned[image.split(":")[0]], image
    kustomize = _load(ROOT / "k8s" / "overlays" / "dev" / "kustomization.yaml")
    for image in kustomize["images"]:
        if "@sha256:" in image["newTag"]:
            assert f"{image['newName']}:{image['newTag']}" == pinned[image["newName"]], image


def test_the_base_image_is_pinned_once_for_every_dockerfile() -> None:
    bases = {
        path.name: re.findall(r"^ARG BASE_IMAGE=(\S+)$", path.read_text(), re.M)
        for path in (ROOT / "docker").glob("Dockerfile*")
    }
    assert len(set(map(tuple, bases.values()))) == 1, bases
    (base,) = next(iter(bases.values()))
    assert "@sha256:" in base


def test_the_drain_timings_fit_together() -> None:
    """Readiness fails on SIGTERM, nginx stops sending within its keep-alive, the listener
    closes DRAIN_DELAY_S later, and in-flight requests get GRACEFUL_TIMEOUT_S: Docker must
    wait for all of it before it kills the replica."""
    api = _load(COMPOSE / "compose.yml")["services"]["api"]
    env = api["environment"]
    drain, graceful = float(env["DRAIN_DELAY_S"]), float(env["GRACEFUL_TIMEOUT_S"])
    assert _seconds(api["stop_grace_period"]) > drain + graceful
    nginx = (COMPOSE / "nginx" / "nginx.conf").read_text()
    upstream_keepalive = re.search(r"upstream[^}]*keepalive_timeout (\d+)s;", nginx, re.S)
    assert upstream_keepalive, "nginx's upstream keep-alive"
    keepalive = float(env.get("KEEPALIVE_S", Settings.model_fields["keepalive_s"].default))
    # nginx closes its pooled connections before the replica would, and before it drains.
    assert float(upstream_keepalive[1]) < keepalive <= drain
