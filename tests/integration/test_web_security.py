"""Web access: a token on every view and the WebSocket (on by default), size limits, slow clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from ops.http import get_json

pytestmark = pytest.mark.integration

VIEWS = ("/", "/cameras/", "/cameras/cam-1/", "/keys/", "/alerts/", "/results/", "/metrics", "/images/file/x.jpg")


def status(url: str, token: str | None = None, data: bytes | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_every_view_and_the_websocket_need_the_token_but_health(start_worker):
    worker = start_worker()
    base = f"http://127.0.0.1:{worker.port}"
    token = os.environ["ROADWATCH_WEB_TOKEN"]
    assert {path: status(base + path) for path in VIEWS} == {path: 401 for path in VIEWS}
    assert {path: status(base + path, token="wrong") for path in VIEWS} == {path: 401 for path in VIEWS}
    assert status(base + "/health") == 200
    # without the token, liveness only: not the worker's address, partitions, Redis or keys
    with urllib.request.urlopen(base + "/health", timeout=10) as resp:
        assert json.loads(resp.read()) == {"status": "ok"}
    with urllib.request.urlopen(
        urllib.request.Request(base + "/health", headers={"Authorization": f"Bearer {token}"}), timeout=10
    ) as resp:
        assert "partitions" in json.loads(resp.read())
    assert status(base + "/keys/", token) == 200 and status(base + "/?token=" + token) == 200
    assert status(base + "/keys/key-1/disable", data=b"{}") == 401

    async def ws(url: str) -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url):
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status

    assert asyncio.run(ws(base.replace("http", "ws") + "/ws")) == 401
    assert asyncio.run(ws(base.replace("http", "ws") + "/ws?token=" + token)) == 101
    # an oversized body is refused before any handler reads it
    assert status(base + "/keys/key-1/disable", token, data=b"x" * 200_000) == 413
    assert worker.popen.poll() is None


def test_without_a_configured_token_one_is_made_and_kept_in_the_data_dir(start_worker, tmp_path):
    worker = start_worker({"ROADWATCH_WEB_TOKEN": None})
    token_file = tmp_path / "faust-1" / "web-token"
    token = token_file.read_text().strip()
    assert len(token) >= 24 and oct(token_file.stat().st_mode & 0o777) == "0o600"
    base = f"http://127.0.0.1:{worker.port}"
    assert status(base + "/keys/") == 401 and status(base + "/keys/", token) == 200
    assert token not in worker.log.read_text()  # the log names the file, never the token


def test_slow_loris_clients_do_not_starve_the_views(start_worker):
    """200 connections that trickle half a request header never block a normal request."""
    worker = start_worker()
    socks = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", worker.port), timeout=5)
        s.sendall(b"GET /cameras/ HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    try:
        timings = []
        for round_ in range(5):
            for s in socks:
                try:
                    s.sendall(f"X-Slow-{round_}: y\r\n".encode())
                except OSError:
                    pass  # the server may drop a connection; that is fine too
            started = time.monotonic()
            assert "keys" in get_json(f"http://127.0.0.1:{worker.port}/keys/", timeout=5)
            timings.append(time.monotonic() - started)
            time.sleep(1)
        print(f"slow loris: 200 trickling connections, normal /keys/ answered in max {max(timings) * 1000:.0f} ms")
        assert max(timings) < 1.0
        assert worker.popen.poll() is None
    finally:
        for s in socks:
            s.close()
