"""Findings of the hostile review (issue 18), each replayed: it failed before its fix."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest

from service.server.gunicorn_app import prepare_multiprocess_dir
from service.storage.spool import Spool, open_append
from tests.conftest import SettingsFactory, serve

pytestmark = pytest.mark.integration

ZEROS = [[0.0] * 8] * 8


@pytest.mark.parametrize(
    "instance",
    [
        pytest.param([["7"] * 8] * 8, id="strings"),
        pytest.param([[True] * 8] * 8, id="booleans"),
        pytest.param([[0.0] * 8] * 7 + [[0.0] * 3], id="ragged"),
    ],
)
async def test_digits_takes_numbers_only_as_pixels(
    client: httpx.AsyncClient, instance: list[list[object]]
) -> None:
    r = await client.post("/v1/models/digits:predict", json={"instances": [instance]})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("instance 0:")


async def test_a_body_of_many_bad_parts_gets_a_bounded_422(client: httpx.AsyncClient) -> None:
    # 40,000 inputs, each missing every field, and keys as long as a body allows.
    body = {"inputs": [{"k" * 2000: 1} for _ in range(200)] + [{} for _ in range(40_000)]}
    r = await client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 422
    problem = r.json()
    assert problem["errors_total"] > 40_000
    assert len(problem["errors"]) == 20
    assert len(r.content) < 16_384, len(r.content)


def test_the_metrics_dir_loses_only_stale_metrics_files(tmp_path: Path) -> None:
    # PROMETHEUS_MULTIPROC_DIR=$HOME once emptied the home directory.
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "counter_1.db").write_bytes(b"x")
    for stale in ("counter_123.db", "gauge_livesum_123.db", "histogram_77.db"):
        (tmp_path / stale).write_bytes(b"x")
    prepare_multiprocess_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]
    assert (tmp_path / "project" / "counter_1.db").exists()


def test_a_planted_spool_file_is_not_replayed(tmp_path: Path) -> None:
    # Finding 9: any file named like a spool file was replayed as rows, symlinks included.
    outside = tmp_path / "outside.jsonl"
    outside.write_bytes(b'{"request_id": "planted"}\n')
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir(mode=0o777)
    spool_dir.chmod(0o777)
    (spool_dir / "ready-1.0badc0de-0.jsonl").symlink_to(outside)
    spool = Spool(spool_dir)
    assert stat.S_IMODE(spool_dir.stat().st_mode) == 0o700  # made private
    assert list(spool.claim()) == []
    assert (spool_dir / "ready-1.0badc0de-0.jsonl").is_symlink()  # left where it was


def test_spool_files_are_never_opened_through_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    spool = Spool(tmp_path / "spool")
    (tmp_path / "spool" / f"active-{spool.owner}.jsonl").symlink_to(target)
    with pytest.raises(OSError, match=r"symbolic link|Too many levels"):
        spool.append([b"{}"])
    assert target.read_bytes() == b""
    with pytest.raises(OSError):
        open_append(tmp_path / "spool" / f"active-{spool.owner}.jsonl")


async def test_a_load_error_shows_no_host_paths(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    # Finding 9: /v1/models showed errors with the server's absolute paths in them.
    gone = tmp_path / "secret-place" / "digests.txt"
    gone.parent.mkdir()
    gone.write_text("")
    settings = make_settings(model_trust="digest-pinned", model_digests_file=gone)
    gone.unlink()  # after the settings' check: loading then fails on a path of the host
    async with serve(settings) as http:
        (digits,) = (await http.get("/v1/models")).json()["models"]
        metadata = (await http.get("/v2/models/digits")).text
    (error,) = [v["error"] for v in digits["versions"]]
    assert "digests.txt" in error, error
    assert str(tmp_path) not in error and str(tmp_path) not in metadata
