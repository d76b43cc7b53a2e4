"""Slow clients do not hold `manage.py serve` (issue 10, point 9).

A real `serve` process, raw sockets: a client that sends its headers slowly (or never finishes
them), or announces a body and trickles it, is closed within the read timeout plus a generous
slack, on the lean doors (``/v1``, the REST execute path) and on Django's routes alike, while
normal requests keep being answered. Past the connection cap, a request is answered 503.

The servers here run with 2 s timeouts so the file stays quick; the assertions allow many
times that (a loaded 2-core machine), and on a server without the timeouts the connections
stay open for as long as anyone waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live import ROOT, embedded_env, free_port, manage, wait_http

TIMEOUT_S = 2.0
SLACK_S = 10.0  # "closed within the timeout, give or take a busy machine"


@dataclass
class Live:
    url: str
    port: int
    key: str
    process: subprocess.Popen[bytes]


def _start(var_dir: Path, log: Path, **env: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=embedded_env(var_dir) | env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_http(f"http://127.0.0.1:{port}/healthz")
    return process, port


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    var_dir = tmp_path_factory.mktemp("slow-clients")
    manage(var_dir, "migrate", "--noinput")
    manage(
        var_dir,
        "apply",
        "-f",
        "-",
        stdin=(
            "providers: [{name: sim, kind: simulated, simulation: {latency_ms: 0, seed: 1}}]\n"
            "models: [{name: m, provider: sim, upstream_model: m-1}]\n"
            "agents: [{name: helper, model: m}]\n"
        ),
    )
    key = manage(var_dir, "create_api_key", "--name", "slow", "--scopes", "execute").strip()
    return var_dir, key


@pytest.fixture(scope="module")
def timed(prepared: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    var_dir, key = prepared
    log = tmp_path_factory.mktemp("slow-clients-log") / "serve.log"
    process, port = _start(
        var_dir,
        log,
        BREAKWATER_HEADER_TIMEOUT_S=str(TIMEOUT_S),
        BREAKWATER_BODY_TIMEOUT_S=str(TIMEOUT_S),
    )
    try:
        yield Live(f"http://127.0.0.1:{port}", port, key, process)
    finally:
        _stop(process)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setblocking(False)
    return sock


def _closed_within(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """The sockets the server has not closed after ``seconds`` (whatever it sent before)."""
    deadline = time.monotonic() + seconds
    open_ = list(socks)
    # epoll, not select(): late in a full run this process's descriptors pass FD_SETSIZE (1024).
    with selectors.DefaultSelector() as watch:
        for sock in open_:
            watch.register(sock, selectors.EVENT_READ, sock)
        while open_ and time.monotonic() < deadline:
            for key, _ in watch.select(0.2):
                ready: socket.socket = key.data
                try:
                    data = ready.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                if not data:
                    watch.unregister(ready)
                    open_.remove(ready)
    return open_


def _trickle(socks: list[socket.socket], seconds: float) -> None:
    """One more body byte per socket every 0.5 s, for ``seconds`` (ignoring closed ones)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(b"x")
        time.sleep(0.5)


def _healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/healthz", timeout=5) as response:
        return bool(response.status == 200)


def _execute(live: Live) -> int:
    request = urllib.request.Request(
        f"{live.url}/api/v1/agents/helper/execute",
        data=json.dumps({"input": "hi"}).encode(),
        headers={"Authorization": f"Bearer {live.key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def test_connections_that_never_finish_their_headers_are_closed(timed: Live) -> None:
    socks = []
    for index in range(30):
        sock = _connect(timed.port)
        if index % 3:  # two in three start a request line and some headers, then stall
            sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        socks.append(sock)
    try:
        # Meanwhile the server answers everyone else.
        assert _healthy(timed.url)
        assert _execute(timed) == 200
        still_open = _closed_within(socks, TIMEOUT_S + SLACK_S)
        assert not still_open, f"{len(still_open)} of {len(socks)} slow-header connections open"
    finally:
        for sock in socks:
            sock.close()


def test_headers_sent_a_byte_at_a_time_do_not_hold_a_connection(timed: Live) -> None:
    sock = _connect(timed.port)
    try:
        request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n" + b"X-Pad: " + b"a" * 200
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                sock.send(bytes([byte]))
            except OSError:
                closed = True
                break
            if not _closed_within([sock], 0.25):
                closed = True
                break
            if time.monotonic() - started > TIMEOUT_S + SLACK_S:
                break
        assert closed, "a byte every 0.25 s kept the connection open"
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("path", "authorized"),
    [
        ("/v1/chat/completions", True),
        ("/api/v1/agents/helper/execute", True),
        ("/v1/chat/completions", False),
        ("/api/v1/agents/helper/execute", False),
        ("/login/", False),  # a Django route: Django's handler reads the body itself
        ("/healthz", False),
    ],
)
def test_a_body_that_trickles_in_is_cut_off(timed: Live, path: str, authorized: bool) -> None:
    auth = f"Authorization: Bearer {timed.key}\r\n" if authorized else ""
    socks = []
    for _ in range(3):
        sock = _connect(timed.port)
        sock.send(
            (
                f"POST {path} HTTP/1.1\r\nHost: localhost\r\n{auth}"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            ).encode()
        )
        socks.append(sock)
    try:
        _trickle(socks, TIMEOUT_S + 1)
        assert _healthy(timed.url)
        still_open = _closed_within(socks, SLACK_S)
        assert not still_open, f"{len(still_open)} trickling connections to {path} still open"
    finally:
        for sock in socks:
            sock.close()


def test_a_prompt_client_is_not_cut_off_by_the_timeouts(timed: Live) -> None:
    """Keep-alive: two requests on one connection, the second after a pause shorter than the
    keep-alive timeout; a body sent at once is read in full."""
    body = json.dumps({"input": "hi"}).encode()
    request = (
        f"POST /api/v1/agents/helper/execute HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {timed.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection(("127.0.0.1", timed.port), timeout=10) as sock:
        for _ in range(2):
            sock.sendall(request)
            answer = b""
            while b'"execution_id"' not in answer or not answer.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, f"closed before the answer: {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            time.sleep(1.0)


def test_past_the_connection_cap_a_request_is_answered_503(
    prepared: tuple[Path, str], tmp_path: Path
) -> None:
    var_dir, _ = prepared
    process, port = _start(
        var_dir,
        tmp_path / "serve.log",
        BREAKWATER_MAX_CONNECTIONS="8",
        BREAKWATER_HEADER_TIMEOUT_S="60",
    )
    idle = []
    try:
        idle = [_connect(port) for _ in range(12)]
        time.sleep(0.5)  # accepted by the server
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            with contextlib.suppress(ConnectionResetError):
                while chunk := sock.recv(65536):
                    answer += chunk
        assert answer == b"" or answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        for sock in idle:
            sock.close()
        idle = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _healthy(f"http://127.0.0.1:{port}"):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the server did not answer again once the idle connections closed")
    finally:
        for sock in idle:
            sock.close()
        _stop(process)
