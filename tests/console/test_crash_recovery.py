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
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.live import free_port, manage, serve, wait_http

DOC = """
providers:
  - {name: slow, kind: simulated, simulation: {latency_ms: 30000, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: slow, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: patient, model: m, timeout_s: 60, max_retries: 0}
"""


def _status(var_dir: Path) -> list[tuple[str, str]]:
    code = (
        "from agents.models import Execution;"
        "import json;"
        "print(json.dumps([[e.status, (e.error or {}).get('type', '')]"
        " for e in Execution.objects.all()]))"
    )
    output = manage(var_dir, "shell", "-c", code)
    return [tuple(row) for row in json.loads(output.strip().splitlines()[-1])]


def test_a_process_killed_mid_execution_loses_no_record(tmp_path: Path) -> None:
    manage(tmp_path, "migrate", "--noinput", "-v0")
    manage(tmp_path, "apply", "-f", "-", stdin=DOC)
    key = manage(tmp_path, "create_api_key", "--name", "t", "--scopes", "execute").strip()
    port = free_port()
    server = serve(tmp_path, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
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
    manage(tmp_path, "drain_records", "--once")
    assert _status(tmp_path) == [("running", "")]

    # Once stale, the reaper fails it as lost: every accepted execution ends somewhere.
    reap = (
        "from datetime import timedelta; from django.utils import timezone;"
        "from agents.executions.queue import executions_reap_stale;"
        "print(executions_reap_stale(now=timezone.now() + timedelta(hours=2)))"
    )
    assert manage(tmp_path, "shell", "-c", reap).strip().splitlines()[-1] == "1"
    assert _status(tmp_path) == [("failed", "worker_lost")]
