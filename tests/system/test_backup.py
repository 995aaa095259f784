"""The restore drill: back up a serving stack, destroy its volumes, restore, and get the same
data back; a corrupted or partial backup is refused; an encrypted backup verifies.

The tests share one stack (the local stack, project torchdock-backup) and run in file order.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.digits_data import held_out
from tests.paths import ROOT
from tests.system.stack import Stack, running_stack

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

PROJECT = "torchdock-backup"
PAYLOADS = (
    "SELECT request_id, md5(input_payload), md5(output_payload), input_digest, output_digest"
    " FROM predictions ORDER BY request_id"
)


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("backups") / "torchdock"


@pytest.fixture(scope="module")
def stack(
    docker_engine: None, tmp_path_factory: pytest.TempPathFactory, backups: Path
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("backup-stack")
    settings = f"API_REPLICAS=2\nAPI_LOG_PAYLOADS=true\nBACKUP_DIR={backups}\n"
    with running_stack(work, PROJECT, settings=settings) as stack:
        yield stack


def script(stack: Stack, name: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "scripts" / name), "--local", *args],
        env={**stack.env, **env}, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def serve_and_cache(stack: Stack) -> list[httpx.Response]:
    images = held_out()[0]
    with stack.client() as client:
        responses = [stack.predict(client, images[i]) for i in range(20)]
        text = {"instances": ["a sentence to back up", "and another one"]}
        minilm = client.post(f"{stack.url}/v1/models/minilm:predict", json=text)
        stack.count(minilm)
    assert {r.status_code for r in [*responses, minilm]} == {200}
    return responses


def test_backup_destroy_restore_gives_the_same_data_back(stack: Stack, backups: Path) -> None:
    first = serve_and_cache(stack)
    assert {r.headers["x-cache"] for r in first} == {"miss"}
    stack.wait_for_rows()
    rows = stack.psql(PAYLOADS)
    assert len(rows.splitlines()) == stack.logged == 21
    assert stack.redis_keys() >= 20

    made = script(stack, "backup")
    assert made.returncode == 0, made.stderr[-4000:]
    [folder] = sorted(backups.glob("20*Z"))
    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "postgres.dump", "redis.rdb", "prometheus-data.tar.gz", "alertmanager-data.tar.gz",
    }  # fmt: skip
    assert {"pg_dump", "redis", "docker", "compose"} <= set(manifest["tools"])
    for file in folder.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    # No secret in the backup's metadata or in what the script printed.
    secrets = stack.secret_values()
    printed = made.stdout + made.stderr + (folder / "manifest.json").read_text()
    assert not [s for s in secrets if s in printed]

    stack.script("down", "--volumes")
    stack.script("up")
    assert stack.rows() == 0
    assert stack.redis_keys() == 0

    restored = script(stack, "restore", "--yes")
    assert restored.returncode == 0, restored.stderr[-4000:]
    assert stack.psql(PAYLOADS) == rows, "the same rows, request ids and payload checksums"
    stack.wait_for_key()  # the keys table came back with the rest
    with stack.client() as client:
        again = [stack.predict(client, held_out()[0][i]) for i in range(20)]
    assert {r.headers["x-cache"] for r in again} == {"hit"}, "the cache came back"
    assert [r.json() for r in again] == [r.json() for r in first]
    ready = httpx.get(f"{stack.url}/v2/health/ready", timeout=10)
    assert ready.status_code == 200


def test_verify_restores_the_latest_backup_into_a_throwaway_postgres(
    stack: Stack, backups: Path
) -> None:
    verified = script(stack, "verify-backup")
    assert verified.returncode == 0, verified.stderr[-4000:]
    count, newest = verified.stdout.split()
    assert int(count) == 21
    assert newest < sorted(backups.glob("20*Z"))[-1].name


def test_a_corrupted_or_partial_backup_is_refused(stack: Stack, backups: Path) -> None:
    [good] = sorted(backups.glob("20*Z"))
    corrupt = backups / "29990101T000000Z"
    shutil.copytree(good, corrupt)
    dump = corrupt / "postgres.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    refused = script(stack, "restore", str(corrupt), "--yes")  # options after the path too
    assert refused.returncode != 0
    assert "failed its checksums: refusing it" in refused.stderr
    assert "postgres.dump: sha256 differs from the manifest" in refused.stderr

    (corrupt / "manifest.json").unlink()
    partial = script(stack, "restore", "--yes", str(corrupt))
    assert partial.returncode != 0
    assert "is not a complete backup (no manifest): refusing it" in partial.stderr
    unconfirmed = script(stack, "restore", str(good))
    assert unconfirmed.returncode != 0 and "confirm with --yes" in unconfirmed.stderr
    shutil.rmtree(corrupt)
    assert stack.rows() == stack.logged, "a refused restore touches nothing"


def test_an_encrypted_backup_holds_no_plaintext_and_verifies(stack: Stack, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    if not shutil.which("age-keygen"):  # the scripts install age; the test needs it first
        subprocess.run(["bash", "-c", "apt-get update -qq && apt-get install -y -qq age"],
                       check=True, capture_output=True)  # fmt: skip
    subprocess.run(["age-keygen", "-o", str(keys / "identity.txt")], check=True,
                   capture_output=True)  # fmt: skip
    recipients = subprocess.run(["age-keygen", "-y", str(keys / "identity.txt")], check=True,
                                capture_output=True, text=True).stdout  # fmt: skip
    (keys / "recipients.txt").write_text(recipients)
    encrypted_dir = tmp_path / "encrypted"
    env = {"BACKUP_DIR": str(encrypted_dir), "BACKUP_AGE_RECIPIENTS": str(keys / "recipients.txt")}
    made = script(stack, "backup", **env)
    assert made.returncode == 0, made.stderr[-4000:]
    [folder] = sorted(encrypted_dir.glob("20*Z"))
    names = {p.name for p in folder.iterdir()} - {"manifest.json", "SHA256SUMS"}
    assert names and all(n.endswith(".age") for n in names), names
    assert b"PGDMP" not in (folder / "postgres.dump.age").read_bytes()
    refused = script(stack, "verify-backup", **env)
    assert refused.returncode != 0 and "set BACKUP_AGE_IDENTITY" in refused.stderr
    verified = script(stack, "verify-backup", **env,
                      BACKUP_AGE_IDENTITY=str(keys / "identity.txt"))  # fmt: skip
    assert verified.returncode == 0, verified.stderr[-4000:]
    assert int(verified.stdout.split()[0]) == stack.logged
