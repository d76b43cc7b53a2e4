"""`manage.py runserver` end to end: daphne's development server, serving ``console.asgi``'s
application, websockets included, with ``DEBUG`` off and on.

The server runs as a real subprocess (``--noreload``, embedded mode: in-process state) on this
test's database, where the test stored an API key and a finished execution first. Django's own
runserver (WSGI) would answer the pages but refuse every websocket with an HTTP 404.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from websockets.sync.client import connect

from agents.access.services import api_key_create
from agents.models import Execution, ExecutionStatus
from tests.live import ROOT, embedded_env, free_port

pytestmark = pytest.mark.django_db(transaction=True)

START_TIMEOUT_S = 30


@dataclass(frozen=True)
class Runserver:
    base: str
    key: str
    execution_id: str
    log: Path

    @property
    def ws(self) -> str:
        return self.base.replace("http://", "ws://")


def _database_url() -> str:
    """This test's database, for the other process (the key and the execution are in it)."""
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        host, port = db["HOST"] or "127.0.0.1", db["PORT"] or 5432
        return f"postgres://{db['USER']}{password}@{host}:{port}/{db['NAME']}"
    return f"sqlite:///{db['NAME']}"


def _get(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


@pytest.fixture(params=["0", "1"], ids=["DEBUG-off", "DEBUG-on"])
def runserver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runserver]:
    key = api_key_create(name="runserver", scopes=["read"]).plaintext
    execution = Execution.objects.create(
        agent_name="helper",
        status=ExecutionStatus.SUCCEEDED,
        output="hello",
        finished_at=timezone.now(),
    )
    port = free_port()
    log = tmp_path / "runserver.log"
    # DEBUG off (the default) is the case that used to get Django's runserver.
    env = embedded_env(
        tmp_path / "var", DATABASE_URL=_database_url(), DEBUG=request.param, LOG_LEVEL="INFO"
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown cannot miss a child
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"runserver exited with {process.returncode}:\n{log.read_text()}")
            with contextlib.suppress(OSError):
                if _get(f"{base}/healthz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"runserver did not answer in {START_TIMEOUT_S}s:\n{log.read_text()}")
            time.sleep(0.1)
        yield Runserver(base, key, str(execution.pk), log)
        # SIGINT is Ctrl-C: daphne stops its reactor and the command returns.
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=10) == 0, log.read_text()
        except subprocess.TimeoutExpired:
            pytest.fail(f"runserver still running 10 s after SIGINT:\n{log.read_text()}")
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_it_serves_the_console_and_its_websockets_through_daphne(runserver: Runserver) -> None:
    status, headers, body = _get(f"{runserver.base}/login/")
    assert status == 200
    assert "csrfmiddlewaretoken" in body
    assert headers.get("Server") == "daphne"  # `serve` (uvicorn) sends no Server header
    status, _, css = _get(f"{runserver.base}/static/css/console.css")  # DEBUG on or off
    assert status == 200
    assert css.strip()
    assert _get(f"{runserver.base}/healthz?key={runserver.key}")[0] == 200  # a key in a URL

    with connect(f"{runserver.ws}/ws/dashboard/?key={runserver.key}", open_timeout=5) as socket:
        snapshot = json.loads(socket.recv(timeout=5))
    assert snapshot["type"] == "snapshot"

    url = f"{runserver.ws}/ws/executions/{runserver.execution_id}/?key={runserver.key}"
    with connect(url, open_timeout=5) as socket:
        messages = [json.loads(socket.recv(timeout=5)) for _ in range(2)]
    assert [m["type"] for m in messages] == ["status", "completed"]
    assert messages[1]["result"]["output"] == "hello"

    # daphne's access log names the requests and sockets, never the key they presented (with
    # DEBUG on too, where Django's own console handler would write every line again, unfiltered).
    deadline = time.monotonic() + 5
    while "WebSocket DISCONNECT /ws/executions/" not in runserver.log.read_text():
        assert time.monotonic() < deadline, runserver.log.read_text()
        time.sleep(0.05)
    log = runserver.log.read_text()
    assert "Starting ASGI/Daphne" in log
    assert "HTTP GET /healthz?key=[redacted] 200" in log
    assert "WebSocket CONNECT /ws/dashboard/" in log
    assert runserver.key not in log
