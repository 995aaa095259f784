"""MODEL_TRUST: digest-pinned and signed manifests; a resealed version is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from service.cli import main
from service.config import ConfigError, load_settings
from service.packaging.package import PackageRequest, package_module
from service.runtime.repository import sha256_file
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration

BODY = {"instances": [[1.0, 2.0, 3.0, 4.0]]}


def add_version(repo: Path, version: int, **request: Any) -> Path:
    torch.manual_seed(version)
    package_module(
        torch.nn.Linear(4, 3),
        (torch.zeros(2, 4),),
        PackageRequest(output=repo, name="tiny", version=version, **request),
    )
    return repo / "tiny" / str(version)


def tamper(version_dir: Path) -> None:
    """What a writer of the repository can do: change a field, keep every sha256 right."""
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["max_batch_size"] = 4096
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


async def _state(make_settings: SettingsFactory, repo: Path, **trust: Any) -> dict[str, Any]:
    settings = make_settings(model_repository=repo, models=["tiny"], **trust)
    async with serve(settings) as client:
        models = (await client.get("/v1/models")).json()["models"]
        return {v["version"]: v for v in models[0]["versions"]}


async def test_signed_manifests(tmp_path: Path, make_settings: SettingsFactory) -> None:
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    assert (
        main(["trust", "keygen", "--private-key", str(private), "--public-key", str(public)]) == 0
    )
    assert private.stat().st_mode & 0o077 == 0
    repo = tmp_path / "repo"
    add_version(repo, 1, signing_key=private)  # signed as it is packaged
    add_version(repo, 2)
    assert main(["trust", "sign", "--key", str(private), str(repo / "tiny" / "2")]) == 0
    add_version(repo, 3)  # never signed
    tamper(add_version(repo, 4, signing_key=private))  # signed, then changed

    trust = {"model_trust": "signed", "model_trust_key_file": public}
    versions = await _state(make_settings, repo, **trust)
    assert versions["1"]["ready"] and versions["2"]["ready"]
    assert "no manifest.json.sig" in versions["3"]["error"]
    assert "signature is not valid" in versions["4"]["error"]

    other = tmp_path / "other.key"
    main(["trust", "keygen", "--private-key", str(other), "--public-key", str(tmp_path / "o.pub")])
    versions = await _state(
        make_settings, repo, model_trust="signed", model_trust_key_file=tmp_path / "o.pub"
    )
    assert all(not v["ready"] for v in versions.values())


async def test_digest_pinned_manifests(
    tmp_path: Path, make_settings: SettingsFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    add_version(repo, 1)
    add_version(repo, 2)
    capsys.readouterr()
    assert main(["trust", "digests", str(repo)]) == 0
    lines = capsys.readouterr().out
    assert f"{sha256_file(repo / 'tiny' / '1' / 'manifest.json')}  tiny/1/manifest.json" in lines
    digests = tmp_path / "digests.txt"  # outside the repository
    digests.write_text(lines)
    tamper(repo / "tiny" / "2")
    add_version(repo, 3)  # not pinned

    trust = {"model_trust": "digest-pinned", "model_digests_file": digests}
    versions = await _state(make_settings, repo, **trust)
    assert versions["1"]["ready"]
    assert "manifest sha256 is not the pinned one" in versions["2"]["error"]
    assert "not in MODEL_DIGESTS_FILE" in versions["3"]["error"]


def test_a_trust_mode_without_its_file_stops_startup() -> None:
    with pytest.raises(ConfigError, match="MODEL_TRUST=signed needs MODEL_TRUST_KEY_FILE"):
        load_settings(_env_file=None, model_trust="signed")
    with pytest.raises(ConfigError, match="needs MODEL_DIGESTS_FILE"):
        load_settings(_env_file=None, model_trust="digest-pinned")
