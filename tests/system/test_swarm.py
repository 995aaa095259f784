"""The Swarm drill: compose/stack.yml on a single-node swarm that the test initialises and
removes, with the api image from the local registry, under load through nginx.

A is the image of this tree; B a release with a new digits version; C never becomes healthy.
Swarm itself rolls the api from A to B, and back from C to B; no request may fail."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.paths import ROOT
from tests.system.docker_cli import docker
from tests.system.releases import BROKEN, VERSION_2, build, publish
from tests.system.server import free_port, wait_until
from tests.system.stack import API_IMAGE, FAST_HEALTHCHECKS, Load, Stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]

STACK = "torchdock-swarm"
API = f"{STACK}_api"


def swarm(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([str(ROOT / "scripts" / "swarm"), "--local", *args], env=env,
                            capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert result.returncode == 0, f"swarm {args}:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def images(registry: str) -> dict[str, str]:
    """A, B and C pushed to the registry, and only there (the api image of the local stack
    tests, torchdock:test, is A)."""
    if docker("image", "inspect", API_IMAGE, check=False).returncode != 0:
        build_api = subprocess.run([str(ROOT / "scripts" / "build-image"), "--local", API_IMAGE],
                                   capture_output=True, text=True, check=False)  # fmt: skip
        assert build_api.returncode == 0, build_api.stderr[-3000:]
    tags = {v: f"{registry}/torchdock-swarm:{v}" for v in ("a", "b", "c")}
    publish(API_IMAGE, tags["a"])
    for version, dockerfile in (("b", VERSION_2), ("c", BROKEN)):
        build(dockerfile, tags[version])
        publish(tags[version], tags[version])
    for tag in tags.values():
        docker("rmi", tag)
    return tags


@pytest.fixture(scope="module")
def stack(images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("swarm")
    http_port = free_port()
    env_file = work / "stack.env"
    env_file.write_text(
        f"TORCHDOCK_IMAGE={images['a']}\nAPI_REPLICAS=3\nHTTP_PORT={http_port}\n"
        f"SECRETS_DIR={work / 'secrets'}\n"
        # The broken release fails its healthcheck after about 36 s instead of 150 s.
        f"API_START_PERIOD=30s\n{FAST_HEALTHCHECKS}"
        # Five replicas (and one more while a task is replaced) must fit on this one node,
        # whatever its CPUs and memory.
        "API_CPU_RESERVATION=0.1\nAPI_MEMORY_RESERVATION=256m\nAPI_MAX_REPLICAS_PER_NODE=6\n"
    )
    env = {**os.environ, "COMPOSE_PROJECT_NAME": STACK, "TORCHDOCK_ENV_FILE": str(env_file)}
    docker("swarm", "leave", "--force", check=False)  # what an interrupted earlier run left
    docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    try:
        node = docker("node", "ls", "--format", "{{.ID}}").stdout.split()[0]
        docker("node", "update", "--label-add", "torchdock.data=true", node)
        started = time.monotonic()
        swarm(env, "deploy")
        print(f"{STACK}: deployed in {time.monotonic() - started:.0f} s")
        stack = Stack(STACK, env, http_port, prometheus_port=0)
        # API keys are on here as in compose: a key made in an api task, taken by every one.
        stack.api_key = swarm(env, "keys", "create", "--name", "e2e",
                              "--rate-limit", "100000/second").strip()  # fmt: skip
        wait_until(lambda: stack_answers(stack), 120, "nginx serving the api on the swarm")
        stack.wait_for_key()
        yield stack
    finally:
        docker("stack", "rm", STACK, check=False)
        wait_until(lambda: not stack_containers(running=True), 120, "the stack's tasks stopped")
        docker("swarm", "leave", "--force", check=False)
        # Stopped task containers stay behind the swarm: they hold the volumes.
        if leftovers := stack_containers(running=False):
            docker("rm", "--force", *leftovers, check=False)
        for volume in docker("volume", "ls", "--quiet").stdout.split():
            if volume.startswith(f"{STACK}_"):
                docker("volume", "rm", volume, check=False)
        assert not stack_containers(running=False)


def stack_containers(*, running: bool) -> list[str]:
    every = [] if running else ["--all"]
    label = f"label=com.docker.stack.namespace={STACK}"
    return docker("ps", *every, "--quiet", "--filter", label).stdout.split()


def stack_answers(stack: Stack) -> bool:
    response = httpx.post(f"{stack.url}/v1/models/digits:predict", headers=stack.auth,
                          json={"instances": [[0] * 64]}, timeout=5)  # fmt: skip
    return response.status_code == 200


def api_spec_image() -> str:
    spec = json.loads(docker("service", "inspect", API).stdout)[0]["Spec"]
    image: str = spec["TaskTemplate"]["ContainerSpec"]["Image"]
    return image.split("@")[0]


def running_api_tasks() -> int:
    tasks = docker("service", "ps", API, "--filter", "desired-state=running",
                   "--format", "{{.CurrentState}}").stdout.splitlines()  # fmt: skip
    return sum(state.startswith("Running") for state in tasks)


def update(*args: str) -> subprocess.CompletedProcess[str]:
    return docker("service", "update", "--detach=false", *args, API, check=False, timeout=900)


def test_swarm_rolls_forward_rolls_back_and_scales_without_failing_a_request(
    stack: Stack, images: dict[str, str]
) -> None:
    assert api_spec_image() == images["a"] and running_api_tasks() == 3

    # B: Swarm replaces the tasks one at a time, start-first; every request succeeds.
    with Load(stack, rate=20) as load:
        time.sleep(3)
        rolled = update("--image", images["b"], "--with-registry-auth")
        time.sleep(8)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert load.failures == [], load.explain()
    assert load.model_versions[0] == "1" and load.model_versions[-1] == "2"
    assert api_spec_image() == images["b"]

    # C never becomes healthy: Swarm rolls back to B by itself, and no request fails.
    with Load(stack, rate=20) as load:
        update("--image", images["c"], "--with-registry-auth")
        wait_until(lambda: api_spec_image() == images["b"] and running_api_tasks() == 3,
                   300, "Swarm back on B")  # fmt: skip
        time.sleep(5)
    state = json.loads(docker("service", "inspect", API).stdout)[0]["UpdateStatus"]["State"]
    assert state == "rollback_completed"
    assert load.failures == [], load.explain()
    assert set(load.model_versions) == {"2"}, "only B's tasks may answer"

    # Scale out and back in under load.
    with Load(stack, rate=20) as load:
        docker("service", "scale", "--detach", f"{API}=5")
        wait_until(lambda: running_api_tasks() == 5, 300, "five api tasks running")
        time.sleep(8)
        docker("service", "scale", "--detach", f"{API}=3")
        wait_until(lambda: running_api_tasks() == 3, 300, "three api tasks running")
        time.sleep(3)
    assert load.failures == [], load.explain()
    assert running_api_tasks() == 3
    assert len(load.replicas) >= 5, "the new tasks must get traffic once nginx sees them"
