"""Finding 9: the uvicorn port took a 2 MB header, and waited forever for a head that never
ended. Replayed against real gunicorn, on a raw socket, as a client reaching port 8000
directly (not through nginx) would."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.system.server import ServerProcess

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("request-heads")
    env = {"MODEL_REPOSITORY": str(model_repo), "MODELS": '["digits"]', "DEVICE": "cpu",
           "PROMETHEUS_MULTIPROC_DIR": str(work / "metrics"),
           "MAX_HEADER_BYTES": "16384", "HEADER_TIMEOUT_S": "1"}  # fmt: skip
    with ServerProcess(env=env, workers=1, log_path=work / "server.log") as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def problem(response: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, orjson.loads(body)


def test_a_huge_header_gets_431_and_the_connection_closes(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # it stopped reading
            for _ in range(32):  # a 2 MB header, as in the review
                sock.sendall(b"a" * 65536)
        response = read_all(sock)
    status, headers, body = problem(response)
    assert status == 431
    assert headers["content-type"] == "application/problem+json"
    assert body["request_id"] == headers["x-request-id"]
    assert "16384 bytes" in str(body["detail"])
    assert httpx.get(f"{server.base_url}/v2/health/live").status_code == 200


def test_a_head_that_never_ends_gets_408_after_the_timeout(server: ServerProcess) -> None:
    for opening, trickle in ((b"", b"GET"), (b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-S")):
        with connect(server) as sock:
            started = time.monotonic()
            sock.sendall(opening)
            for byte in trickle:  # slowloris: a byte now and then, never the end of the head
                time.sleep(0.2)
                sock.sendall(bytes([byte]))
            response = read_all(sock)
            waited = time.monotonic() - started
        status, _, body = problem(response)
        assert status == 408 and body["type"].endswith(":request-head-timeout"), body
        assert 0.9 < waited < 5, waited


def test_the_timeout_restarts_for_each_request_on_a_kept_alive_connection(
    server: ServerProcess,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for _ in range(3):
            time.sleep(0.6)  # each request's head in time, the three together not
            connection.request("GET", "/v2/health/live")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b'{"live":true}'
            assert response.getheader("connection") != "close"
    finally:
        connection.close()


def test_a_head_within_the_limit_is_served(server: ServerProcess) -> None:
    r = httpx.get(f"{server.base_url}/v2/health/live", headers={"X-Big": "a" * 12000})
    assert r.status_code == 200
