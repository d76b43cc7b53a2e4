"""`manage.py serve` end to end: it serves, and a signal stops it cleanly with nothing left over.

Each test runs the real command in a subprocess against a fresh SQLite database in a temporary
``BREAKWATER_VAR_DIR`` (embedded mode: the in-process worker and scheduler run too).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 20


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("serve-var")
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=ROOT,
        env=_env(path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return path


def _env(var_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DEBUG"}
    }
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        BREAKWATER_VAR_DIR=str(var_dir),
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    request = urllib.request.Request(url)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Location", "") or exc.read().decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _children(pid: int) -> set[int]:
    """Direct children of ``pid``, from /proc (psutil is not a dependency)."""
    found = set()
    for status in Path("/proc").glob("[0-9]*/status"):
        with contextlib.suppress(OSError):
            for line in status.read_text().splitlines():
                if line.startswith("PPid:") and int(line.split()[1]) == pid:
                    found.add(int(status.parent.name))
    return found


def _processes_using(var_dir: Path) -> set[int]:
    """Every process whose environment names ``var_dir``: anything the server left behind."""
    marker = f"BREAKWATER_VAR_DIR={var_dir}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker in environ.read_bytes().split(b"\0"):
                found.add(int(environ.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"  # not a zombie


class Server:
    def __init__(self, var_dir: Path, log_dir: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr_path = log_dir / f"serve-{self.port}.log"
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=_env(var_dir),
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown can never miss one
        )

    @property
    def log(self) -> str:
        return self.stderr_path.read_text()

    def wait_until_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode}:\n{self.log}")
            with contextlib.suppress(OSError):
                if _get(f"{self.url}/healthz")[0] == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"serve did not answer /healthz within {START_TIMEOUT_S}s:\n{self.log}")

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._stderr.close()


@pytest.fixture
def server(var_dir: Path, tmp_path: Path) -> Iterator[Server]:
    running = Server(var_dir, tmp_path)
    try:
        running.wait_until_healthy()
        yield running
    finally:
        running.close()


@pytest.fixture(scope="module")
def shared_server(var_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that only make requests (starting one takes seconds)."""
    running = Server(var_dir, tmp_path_factory.mktemp("serve-log"))
    try:
        running.wait_until_healthy()
        yield running
    finally:
        running.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_cleanly_on_a_signal_leaving_nothing_behind(
    server: Server, var_dir: Path, sig: signal.Signals
) -> None:
    assert _get(f"{server.url}/readyz")[0] == 200
    children = _children(server.process.pid)
    assert _processes_using(var_dir) == {server.process.pid} | children

    server.process.send_signal(sig)
    try:
        returncode = server.process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve still running {STOP_TIMEOUT_S}s after {sig.name}:\n{server.log}")

    assert returncode == 0, server.log
    assert not [pid for pid in children if _alive(pid)]
    assert _processes_using(var_dir) == set()
    log = server.log
    assert "embedded mode: in-process worker and scheduler running" in log
    assert "breakwater.serve stopped" in log
    assert "Traceback" not in log


def test_a_connection_accepted_just_before_a_stop_still_gets_its_answer(server: Server) -> None:
    # The client connects, the server accepts, and the request is still on its way when SIGTERM
    # arrives: the answer comes (and the connection closes), instead of a reset.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        time.sleep(0.3)  # accepted by now
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while "Shutting down" not in server.log:
            assert time.monotonic() < deadline, server.log
            time.sleep(0.01)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.decode().lower()
    assert head.startswith("http/1.1 200"), answer
    assert "connection: close" in head
    assert server.process.wait(timeout=STOP_TIMEOUT_S) == 0, server.log


def test_serve_sends_anonymous_visitors_to_log_in(shared_server: Server) -> None:
    status, location = _get(f"{shared_server.url}/")
    assert status == 302
    assert location == "/login/?next=/"


def test_serve_renders_the_login_page_on_a_fresh_install(shared_server: Server) -> None:
    status, body = _get(f"{shared_server.url}/login/")
    assert status == 200
    assert "csrfmiddlewaretoken" in body
    # And the stylesheet the console pages link to is served, without `collectstatic`.
    status, css = _get(f"{shared_server.url}/static/css/console.css")
    assert status == 200
    assert css.strip()


def test_serve_logs_sockets_without_the_api_key_in_their_query_string(
    shared_server: Server,
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    key = "bw_live_notarealkey0123456789abcdefghij_ab12cd"
    url = shared_server.url.replace("http://", "ws://") + f"/ws/dashboard/?key={key}"
    with contextlib.suppress(InvalidStatus, OSError), connect(url, open_timeout=5) as socket_:
        socket_.recv(timeout=2)  # refused or closed: the key is unknown
    deadline = time.monotonic() + 5
    while "/ws/dashboard/?key=" not in shared_server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    log = shared_server.log
    assert "/ws/dashboard/?key=[redacted]" in log
    assert key not in log


def _encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


# Forms the query parser decodes to ``key`` (so they authenticate), as a client sends them.
KEY_FORMS = [
    "k%65y={key}",
    "%6b%65%79={encoded}",
    "key=+{key}",
    "a=1&key={key}&key={key}",
]


def _wait_for_log(server: Server, needle: str) -> str:
    deadline = time.monotonic() + 5
    while needle not in server.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert needle in server.log, server.log[-2000:]
    return server.log


@pytest.mark.parametrize("form", KEY_FORMS)
def test_serve_logs_no_form_of_an_api_key_in_a_sockets_query_string(
    shared_server: Server, form: str
) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    from agents.access.keys import generate_key

    key = generate_key().plaintext  # the real format; unknown to the server, so refused
    query = form.format(key=key, encoded=_encoded(key))
    url = shared_server.url.replace("http://", "ws://") + f"/ws/dashboard/?{query}&marker={id(key)}"
    with contextlib.suppress(InvalidStatus, OSError), connect(url, open_timeout=5) as socket_:
        socket_.recv(timeout=2)
    log = _wait_for_log(shared_server, f"marker={id(key)}")
    assert key[3:] not in log
    assert _encoded(key[3:])[:15] not in log
    assert "[redacted]" in log


def test_serve_access_log_carries_no_key_in_a_path_or_query(var_dir: Path, tmp_path: Path) -> None:
    from agents.access.keys import generate_key

    key = generate_key().plaintext
    running = Server(var_dir, tmp_path, "--access-log")
    try:
        running.wait_until_healthy()
        _get(f"{running.url}/api/v1/{key}/nothing")
        _get(f"{running.url}/healthz?k%65y={_encoded(key)}&marker=1")
        log = _wait_for_log(running, "marker=1")
        assert "/nothing" in log
        assert key[3:] not in log
        assert _encoded(key[3:])[:15] not in log
    finally:
        running.close()


def test_serve_refuses_an_impossible_port(var_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "serve", "--port", "70000"],
        cwd=ROOT,
        env=_env(var_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--port: must be between 1 and 65535, got 70000" in result.stderr
