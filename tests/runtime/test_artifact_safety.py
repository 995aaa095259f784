"""The model repository as a trust boundary: hostile artifacts are refused and nothing runs.

Each attack is first shown to work (with ALLOW_PICKLED_ARTIFACTS=true the payload runs), then
shown to be refused by default, with the sha256 in the manifest matching the tampered file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from service.packaging.package import PackageRequest, package_module
from service.runtime.artifact_safety import check_artifact, pickle_globals
from service.runtime.errors import ModelLoadError
from service.runtime.manifest import Manifest
from service.runtime.repository import sha256_file
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration


class _Payload:
    """Unpickling this creates `marker`: the stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def version_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3))
    package_module(module, (torch.zeros(2, 4),), PackageRequest(output=tmp_path, name="tiny"))
    return tmp_path / "tiny" / "1"


def _rewrite(archive: Path, change: Callable[[str, bytes], bytes]) -> None:
    with zipfile.ZipFile(archive) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in members:
            target.writestr(name, change(name, data))


def _reseal(version: Path) -> None:
    """What an attacker with write access does: make the manifest's sha256 match again."""
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["sha256"] = sha256_file(version / manifest["artifact"])
    (version / "manifest.json").write_text(json.dumps(manifest))


def _pickled_weight(marker: Path) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/weight_0"):
            return pickle.dumps(_Payload(marker))
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            config["config"]["0.weight"]["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    return change


def _hostile_sample_inputs(marker: Path) -> Callable[[str, bytes], bytes]:
    def change(name: str, data: bytes) -> bytes:
        if "/data/sample_inputs/" in name:
            buffer = io.BytesIO()
            torch.save(_Payload(marker), buffer)
            return buffer.getvalue()
        return data

    return change


async def _models(settings_factory: SettingsFactory, repo: Path, **extra: object) -> dict:
    settings = settings_factory(model_repository=repo, models=["tiny"], **extra)
    async with serve(settings) as client:
        r = await client.get("/v1/models")
        assert r.status_code == 200
        return dict(r.json()["models"][0]["versions"][0])


@pytest.mark.parametrize("attack", [_pickled_weight, _hostile_sample_inputs])
async def test_a_pickle_in_a_resealed_archive_is_refused_and_does_not_run(
    version_dir: Path,
    tmp_path: Path,
    make_settings: SettingsFactory,
    attack: Callable[[Path], Callable[[str, bytes], bytes]],
) -> None:
    marker = tmp_path / "payload-ran"
    _rewrite(version_dir / "model.pt2", attack(marker))
    _reseal(version_dir)

    refused = await _models(make_settings, version_dir.parent.parent)
    assert refused["ready"] is False
    assert "refused, it can run code when loaded" in refused["error"]
    assert "ALLOW_PICKLED_ARTIFACTS" in refused["error"]
    assert not marker.exists()

    # The attack is real: let torch load it, and the payload runs.
    await _models(make_settings, version_dir.parent.parent, allow_pickled_artifacts=True)
    assert marker.exists()


@pytest.mark.parametrize(
    "path", ["../../../../etc/hostname", "/etc/hostname", "a/../../b", "./model.pt2"]
)
def test_a_manifest_naming_a_file_outside_its_version_is_invalid(
    version_dir: Path, path: str
) -> None:
    raw = json.loads((version_dir / "manifest.json").read_text())
    for field in ("artifact", "files"):
        hostile = {**raw, field: path if field == "artifact" else {path: "0" * 64}}
        with pytest.raises(ValueError, match="not a plain relative path"):
            Manifest.model_validate(hostile)


async def test_a_symlink_out_of_the_version_is_refused(
    version_dir: Path, make_settings: SettingsFactory
) -> None:
    outside = version_dir.parent.parent.parent / "outside.txt"
    outside.write_text("secret")
    (version_dir / "notes.txt").symlink_to(outside)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["files"] = {"notes.txt": sha256_file(outside)}
    (version_dir / "manifest.json").write_text(json.dumps(manifest))

    version = await _models(make_settings, version_dir.parent.parent)
    assert version["ready"] is False
    assert "notes.txt resolves outside the version directory" in version["error"]


def test_a_torchscript_archive_with_a_foreign_global_is_refused(tmp_path: Path) -> None:
    script = tmp_path / "model.pt"
    with zipfile.ZipFile(script, "w") as archive:
        archive.writestr("model/data.pkl", pickle.dumps(_Payload(tmp_path / "x")))
        archive.writestr("model/constants.pkl", pickle.dumps(()))
    with pytest.raises(ModelLoadError, match=r"data.pkl references posix system"):
        check_artifact(script, "torchscript", allow_code=False)


def test_a_real_torchscript_archive_references_torch_only(tmp_path: Path) -> None:
    script = tmp_path / "model.pt"
    with pytest.warns(DeprecationWarning):
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(script))
    check_artifact(script, "torchscript", allow_code=False)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickle_globals_finds_the_import_in_every_protocol(protocol: int) -> None:
    found = pickle_globals(pickle.dumps(_Payload(Path("/x")), protocol=protocol))
    assert found == ["posix system"]


async def test_the_unmodified_archive_loads(
    version_dir: Path, make_settings: SettingsFactory
) -> None:
    version = await _models(make_settings, version_dir.parent.parent)
    assert version["ready"] is True, version["error"]
