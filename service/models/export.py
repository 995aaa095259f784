"""Writing a model version: a torch.export archive plus its manifest, checksummed."""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from service.runtime.manifest import Manifest
from service.runtime.repository import sha256_file


def export_program(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    dynamic_shapes: Any,
) -> torch.export.ExportedProgram:
    module.eval()
    with torch.no_grad():
        return torch.export.export(module, example, dynamic_shapes=dynamic_shapes, strict=False)


def write_version(
    *,
    output: Path,
    program: torch.export.ExportedProgram,
    manifest_fields: dict[str, Any],
    extra_files: dict[str, Path] | None = None,
) -> Manifest:
    """Write `<output>/<name>/<version>/` atomically: a reader never sees half a version."""
    name, version = manifest_fields["name"], manifest_fields["version"]
    target = output / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-{version}-", dir=target.parent))
    try:
        # mkdtemp makes it private (0700); a model repository is read by other users too (the
        # server's non-root user in the image, say).
        staging.chmod(0o755)
        artifact = staging / "model.pt2"
        torch.export.save(program, str(artifact))
        for target_name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / target_name)
        manifest = Manifest(
            **manifest_fields,
            artifact=artifact.name,
            sha256=sha256_file(artifact),
            files={n: sha256_file(staging / n) for n in extra_files or {}},
            torch_version=torch.__version__,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        manifest.write(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
