"""The deploy drill: images pushed to a real registry on 127.0.0.1 (Debian's docker-registry),
deployed from there onto a running stack with scripts/deploy, under load.

A is the image the stack starts with; B is a release with a new version of the digits model;
C is broken: it listens on another port, so its healthcheck never passes. No request may fail
at any step, and the deployment record must say what runs."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.paths import ROOT
from tests.system.docker_cli import docker
from tests.system.releases import BROKEN, VERSION_2, build, publish
from tests.system.stack import API_IMAGE, Load, Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1500)]

PROJECT = "torchdock-deploy"


@pytest.fixture(scope="module")
def stack(
    docker_engine: None, registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("deploy-stack")
    with running_stack(work, PROJECT, settings="API_REPLICAS=2\n") as stack:
        stack.env["DEPLOY_DIR"] = str(work / "deployments")
        # The broken release waits out the whole timeout; a sound replica is healthy within
        # ~8 s here (2 s checks), so 45 s leaves 5x that for a slower machine.
        stack.env["DEPLOY_TIMEOUT_S"] = "45"
        yield stack


def deploy(stack: Stack, image: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / "deploy"), "--local", image],
        env=stack.env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


def running_images(stack: Stack) -> set[str]:
    return {c["Image"] for c in stack.containers("api")}


def image_id(reference: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()


def record(stack: Stack) -> tuple[dict[str, str], list[dict[str, str]]]:
    directory = Path(stack.env["DEPLOY_DIR"])
    history = [json.loads(line) for line in (directory / "history.jsonl").read_text().splitlines()]
    return json.loads((directory / "current").read_text()), history


def declared_image(stack: Stack) -> str:
    settings = Path(stack.env["TORCHDOCK_ENV_FILE"]).read_text().splitlines()
    return next(line.split("=", 1)[1] for line in settings if line.startswith("TORCHDOCK_IMAGE="))


def test_deploy_from_the_registry_then_a_new_release_then_roll_back_a_broken_one(
    stack: Stack, registry: str
) -> None:
    a, b, c = (f"{registry}/torchdock:{v}" for v in ("a", "b", "c"))
    digest_a = publish(API_IMAGE, a)
    build(VERSION_2, b)
    publish(b, b)
    build(BROKEN, c)
    publish(c, c)
    for tag in (a, b, c):  # what deploy runs must come from the registry
        docker("rmi", tag)

    # 1. A, from the registry: the same image the stack runs, so nothing is replaced.
    first = deploy(stack, a)
    assert first.returncode == 0, first.stderr[-4000:]
    current, history = record(stack)
    assert current["image"] == a and current["digest"] == digest_a
    assert declared_image(stack) == a and running_images(stack) == {image_id(a)}

    # 2. B under load: every request succeeds, and the answers move to model version 2.
    with Load(stack, rate=20) as load:
        time.sleep(3)
        second = deploy(stack, b)
        time.sleep(8)  # nginx follows the new replicas within a few seconds
    assert second.returncode == 0, second.stderr[-4000:]
    assert load.failures == [], load.explain()
    assert load.model_versions[0] == "1" and load.model_versions[-1] == "2"
    assert running_images(stack) == {image_id(b)}
    current, history = record(stack)
    assert current["image"] == b and current["previous"] == a
    assert declared_image(stack) == b

    # 3. C never becomes healthy: the deploy rolls back to B, and no request fails meanwhile.
    with Load(stack, rate=20) as load:
        third = deploy(stack, c)
    assert third.returncode == 1, third.stderr[-4000:]
    assert "rolling back" in third.stderr
    assert load.failures == [], load.explain()
    assert set(load.model_versions) == {"2"}, "only B's replicas may answer"
    assert running_images(stack) == {image_id(b)} and len(stack.containers("api")) == 2
    current, history = record(stack)
    assert current["image"] == b, "the record still names what runs"
    assert [h["outcome"] for h in history] == ["deployed", "deployed", "rolled-back"]
    assert history[-1]["image"] == c and declared_image(stack) == b
    stack.wait_for_rows()
