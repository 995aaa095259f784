"""A backup folder's manifest: `write` records every file's sha256 and size (in manifest.json,
and in SHA256SUMS for `sha256sum -c`), `check` refuses a folder that does not match it.

Each file is read once, streamed: a TSDB tarball can be gigabytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

_OWN = ("manifest.json", "SHA256SUMS")
_REQUIRED = ("postgres.dump", "redis.rdb")


def sha256_of(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write(folder: Path, created: str, project: str, encryption: str, tools: dict[str, str]) -> None:
    files = {
        path.name: {"sha256": sha256_of(path), "bytes": path.stat().st_size}
        for path in sorted(folder.iterdir())
        if path.name not in _OWN
    }
    manifest = {
        "format": 1,
        "created": created,
        "project": project,
        "encryption": encryption or None,
        "tools": tools,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    sums = "".join(f"{entry['sha256']}  {name}\n" for name, entry in files.items())
    (folder / "SHA256SUMS").write_text(sums)


def problems(folder: Path) -> list[str]:
    manifest = json.loads((folder / "manifest.json").read_text())
    bad = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            bad.append(f"{name}: missing")
        elif (size := path.stat().st_size) != expected["bytes"]:
            bad.append(f"{name}: {size} bytes, the manifest says {expected['bytes']}")
        elif sha256_of(path) != expected["sha256"]:
            bad.append(f"{name}: sha256 differs from the manifest")
    for required in _REQUIRED:
        if not any(n in (required, required + ".age") for n in manifest["files"]):
            bad.append(f"{required}: not in the manifest")
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    writing = commands.add_parser("write")
    writing.add_argument("folder", type=Path)
    writing.add_argument("--created", required=True)
    writing.add_argument("--project", required=True)
    writing.add_argument("--encryption", default="")
    writing.add_argument("--tool", action="append", default=[], metavar="NAME=VERSION")
    checking = commands.add_parser("check")
    checking.add_argument("folder", type=Path)
    args = parser.parse_args()
    if args.command == "write":
        tools = dict(tool.split("=", 1) for tool in args.tool)
        write(args.folder, args.created, args.project, args.encryption, tools)
        return 0
    bad = problems(args.folder)
    for line in bad:
        print(f"  {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
