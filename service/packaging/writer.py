"""Writing one model version into a repository: staged, checksummed, then moved into place."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from service.packaging.errors import PackagingError
from service.runtime.manifest import Manifest
from service.runtime.repository import sha256_file, version_number


def next_version(output: Path, name: str) -> int:
    """One above the highest version already in the repository, or 1."""
    model_dir = output / name
    if not model_dir.is_dir():
        return 1
    taken = [n for p in model_dir.iterdir() if (n := version_number(p.name)) is not None]
    return max(taken, default=0) + 1


@contextmanager
def staged_version(output: Path, name: str, version: int, *, force: bool) -> Iterator[Path]:
    """A private directory to write the version into; on success it becomes
    `<output>/<name>/<version>` in one rename, so that a reader never sees half a version."""
    target = output / name / str(version)
    if target.exists() and not force:
        raise PackagingError(f"{name}/{version} already exists in {output} (--force replaces it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=target.parent))
    try:
        # mkdtemp makes it private (0700); a model repository is read by other users too (the
        # server's non-root user in the image, say).
        staging.chmod(0o755)
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_files(staging: Path, files: dict[str, Path]) -> None:
    for target_name, source in files.items():
        if not source.is_file():
            raise PackagingError(f"{source} is missing")
        destination = staging / target_name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)


def write_manifest(
    staging: Path, *, fields: dict[str, Any], artifact: str, files: list[str]
) -> Manifest:
    """The manifest of what `staging` holds, with every file's sha256."""
    manifest = Manifest(
        **fields,
        artifact=artifact,
        sha256=sha256_file(staging / artifact),
        files={name: sha256_file(staging / name) for name in files},
        torch_version=torch.__version__,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    manifest.write(staging)
    return manifest
