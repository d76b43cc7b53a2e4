"""A serving process killed mid-execution loses no execution record (embedded mode, end to end).

The process is SIGKILLed while an execution waits on a slow upstream. The journal already holds
the execution's ``started`` event, so the next process drains it into a ``running`` row, and the
reaper turns that row into ``failed`` (worker lost) once it is stale. Nothing is in the database
that was not journaled first, and nothing journaled is lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

DOC = """
providers:
  - {name: slow, kind: simulated, simulation: {latency_ms: 30000, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: slow, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: patient, model: m, timeout_s: 60, max_retries: 0}
"""


def _env(var_dir: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "DEBUG"}
    }
    env["BREAKWATER_VAR_DIR"] = str(var_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _manage(var_dir: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=_env(var_dir),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {deadline_s}s")


def _status(var_dir: Path) -> list[tuple[str, str]]:
    code = (
        "from agents.models import Execution;"
        "import json;"
        "print(json.dumps([[e.status, (e.error or {}).get('type', '')]"
        " for e in Execution.objects.all()]))"
    )
    output = _manage(var_dir, "shell", "-c", code)
    return [tuple(row) for row in json.loads(output.strip().splitlines()[-1])]


def test_a_process_killed_mid_execution_loses_no_record(tmp_path: Path) -> None:
    _manage(tmp_path, "migrate", "--noinput", "-v0")
    _manage(tmp_path, "apply", "-f", "-", stdin=DOC)
    key = _manage(tmp_path, "create_api_key", "--name", "t", "--scopes", "execute").strip()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthz")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/agents/patient/execute",
            data=b'{"input": "take your time"}',
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )

        def call() -> None:
            # The server dies under it: an error is expected.
            with contextlib.suppress(urllib.error.URLError, OSError, ConnectionError):
                urllib.request.urlopen(request, timeout=60)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        journal = tmp_path / "journal"
        end = time.monotonic() + 20
        while time.monotonic() < end:
            text = (
                "".join(p.read_text() for p in journal.glob("*.jsonl")) if journal.exists() else ""
            )
            if '"started"' in text:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the execution never started")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
        caller.join(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)

    # The next process drains what the dead one journaled.
    _manage(tmp_path, "drain_records", "--once")
    assert _status(tmp_path) == [("running", "")]

    # Once stale, the reaper fails it as lost: every accepted execution ends somewhere.
    reap = (
        "from datetime import timedelta; from django.utils import timezone;"
        "from agents.services import executions_reap_stale;"
        "print(executions_reap_stale(now=timezone.now() + timedelta(hours=2)))"
    )
    assert _manage(tmp_path, "shell", "-c", reap).strip().splitlines()[-1] == "1"
    assert _status(tmp_path) == [("failed", "worker_lost")]
