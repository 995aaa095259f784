"""The model repository on disk: `<root>/<model>/<version>/{manifest.json, model.pt2}`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from service.runtime.errors import ModelLoadError
from service.runtime.manifest import MANIFEST_FILE, Manifest
from service.runtime.trust import TrustPolicy


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: int
    path: Path


def version_number(text: str) -> int | None:
    """A model version as a URL or a directory names it: 1 to 9 ASCII digits, else None.

    str.isdigit alone also takes "²" and other Unicode digits, which int() then refuses."""
    if 0 < len(text) <= 9 and text.isascii() and text.isdigit():
        return int(text)
    return None


def discover(root: Path) -> dict[str, list[VersionRef]]:
    """Every `<model>/<version>` directory that holds a manifest, versions ascending."""
    if not root.is_dir():
        raise ModelLoadError(
            f"model repository {root} does not exist (run `torchdock build-models`)"
        )
    found: dict[str, list[VersionRef]] = {}
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = [
            VersionRef(model_dir.name, number, v)
            for v in model_dir.iterdir()
            if (number := version_number(v.name)) is not None and v.is_dir() and _has_manifest(v)
        ]
        if versions:
            found[model_dir.name] = sorted(versions, key=lambda r: r.version)
    return found


def _has_manifest(directory: Path) -> bool:
    try:
        return (directory / MANIFEST_FILE).is_file()
    except OSError:
        return True  # unreadable: keep it, so that loading it reports why, for this version alone


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def contained(ref: VersionRef, file_name: str) -> Path:
    """`file_name` inside the version directory, symlinks resolved; anything else is refused."""
    root = ref.path.resolve()
    path = (root / file_name).resolve()
    if not path.is_relative_to(root):
        raise ModelLoadError(
            f"{ref.name}/{ref.version}: {file_name} resolves outside the version directory"
        )
    return path


def read_verified_manifest(
    ref: VersionRef, trust: TrustPolicy | None = None
) -> tuple[Manifest, Path]:
    """The manifest, after checking that it is vouched for (MODEL_TRUST), that it matches its
    directory, and that every file it names matches its sha256."""
    try:
        # Read once: the bytes that are vouched for are the bytes that are parsed.
        raw = (ref.path / MANIFEST_FILE).read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{ref.name}/{ref.version}: unreadable manifest: {e}") from e
    (trust or TrustPolicy()).verify(ref.name, ref.version, raw, ref.path)
    try:
        manifest = Manifest.model_validate_json(raw)
    except (ValidationError, ValueError) as e:
        raise ModelLoadError(f"{ref.name}/{ref.version}: unreadable manifest: {e}") from e
    if (manifest.name, manifest.version) != (ref.name, ref.version):
        raise ModelLoadError(
            f"{ref.name}/{ref.version}: manifest says {manifest.name}/{manifest.version}"
        )
    artifact = contained(ref, manifest.artifact)
    for file_name, expected in {manifest.artifact: manifest.sha256, **manifest.files}.items():
        path = contained(ref, file_name)
        if not path.is_file():
            raise ModelLoadError(f"{ref.name}/{ref.version}: {file_name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelLoadError(
                f"{ref.name}/{ref.version}: {file_name} sha256 mismatch"
                f" (manifest {expected[:12]}…, file {actual[:12]}…)"
            )
    return manifest, artifact
