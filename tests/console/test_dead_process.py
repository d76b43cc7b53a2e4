"""A serving process killed with executions in flight leaves nothing stuck (embedded mode, end
to end): the next process settles them at start-up, fails them, and charges each its
reservation, since their calls may have gone upstream and their usage is unknown.

Before: all of them stayed ``running`` for 65 minutes (the stale reaper's default), charged
nowhere.
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
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.live import free_port, manage, serve, wait_http

IN_FLIGHT = 12
DOC = """
providers:
  - {name: slow, kind: simulated, simulation: {latency_ms: 30000, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: slow, upstream_model: m-1, input_usd_per_mtok: 100, output_usd_per_mtok: 100}
agents:
  - {name: patient, model: m, timeout_s: 60, max_retries: 0, max_tokens: 100, daily_budget_usd: 5}
"""


def _rows(var_dir: Path) -> dict[str, list[Any]]:
    code = (
        "import json;"
        "from agents.models import Execution; from budgets.models import SpendEntry;"
        "print(json.dumps({"
        "'rows': [[e.status, (e.error or {}).get('type', ''), str(e.cost_usd), str(e.reserved_usd)]"
        " for e in Execution.objects.all()],"
        "'ledger': [str(s.cost_usd) for s in SpendEntry.objects.all()]}))"
    )
    output = manage(var_dir, "shell", "-c", code)
    return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _started(journal: Path) -> int:
    if not journal.exists():
        return 0
    return "".join(p.read_text() for p in journal.glob("*.jsonl")).count('"started"')


def test_a_killed_serve_leaves_no_execution_running_and_charges_their_reservations(
    tmp_path: Path,
) -> None:
    manage(tmp_path, "migrate", "--noinput", "-v0")
    manage(tmp_path, "apply", "-f", "-", stdin=DOC)
    key = manage(tmp_path, "create_api_key", "--name", "t", "--scopes", "execute,read").strip()
    port = free_port()
    server = serve(tmp_path, port)
    callers = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/agents/patient/execute",
            data=b'{"input": "take your time"}',
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )

        def call() -> None:
            with contextlib.suppress(urllib.error.URLError, OSError, ConnectionError):
                urllib.request.urlopen(request, timeout=60)

        for _ in range(IN_FLIGHT):
            callers.append(threading.Thread(target=call, daemon=True))
            callers[-1].start()
        end = time.monotonic() + 30
        while _started(tmp_path / "journal") < IN_FLIGHT:
            assert time.monotonic() < end, "the executions never all started"
            time.sleep(0.05)
        time.sleep(0.2)  # admitted (the started event leaves with the admission)
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
    for caller in callers:
        caller.join(timeout=10)

    # The next process settles what the dead one left running, before it serves.
    restarted = serve(tmp_path, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        found = _rows(tmp_path)
        budgets = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/budgets", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(budgets, timeout=10) as response:
            (budget,) = json.loads(response.read())["items"]
    finally:
        os.killpg(restarted.pid, signal.SIGTERM)
        restarted.wait(timeout=30)

    rows = found["rows"]
    assert len(rows) == IN_FLIGHT
    assert {(status, kind) for status, kind, _, _ in rows} == {("failed", "process_died")}
    # Charged conservatively: each its reservation, in the row and in the ledger.
    assert all(Decimal(cost) == Decimal(reserved) > 0 for _, _, cost, reserved in rows)
    ledger = sum((Decimal(cost) for cost in found["ledger"]), Decimal(0))
    assert ledger == sum(Decimal(cost) for _, _, cost, _ in rows)
    # The restarted process's budget counter agrees with the ledger.
    assert Decimal(str(budget["spent_usd"])) == ledger.quantize(Decimal("0.000001"))
    assert budget["reserved_usd"] == 0
