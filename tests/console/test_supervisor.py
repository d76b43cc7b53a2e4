"""``serve --workers N``: the supervisor recycles workers with no request in flight lost, restarts
a worker that dies, and stops everything cleanly (live servers, real processes).

Distributed mode (a private redis-server; the database is the var directory's SQLite): embedded
mode keeps its hot state in one process and refuses more than one worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.live import ROOT, embedded_env, free_port, manage, private_redis, wait_http

DOC = """
providers:
  - {name: slow, kind: simulated, simulation: {latency_ms: 400, jitter_ms: 100, error_rate: 0, seed: 3}}
models:
  - {name: m, provider: slow, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: patient, model: m, timeout_s: 30, max_retries: 0, max_tokens: 50, cache_ttl_s: 0}
"""
MAX_REQUESTS = 12
CONCURRENCY = 8


class Deployment:
    """A var directory with the config and a key, a private Redis, and a supervised serve."""

    def __init__(self, var_dir: Path, redis_url: str, *args: str, **env: str) -> None:
        self.var_dir = var_dir
        self.env = {"REDIS_URL": redis_url, **env}
        manage(var_dir, "migrate", "--noinput", "-v0", env=self.env)
        manage(var_dir, "apply", "-f", "-", stdin=DOC, env=self.env)
        self.key = manage(
            var_dir, "create_api_key", "--name", "t", "--scopes", "execute,read", env=self.env
        ).strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = var_dir / "serve.log"
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "serve", "--port", str(self.port), *args],
            cwd=ROOT,
            env=embedded_env(var_dir, **self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def execute(self, n: int) -> tuple[int, str]:
        """One execution on a connection of its own: (status, execution id or error)."""
        body = json.dumps({"input": f"question {n}", "metadata": {"n": n}}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/v1/agents/patient/execute",
            data=body,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())["execution_id"]
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()[:200]
        except OSError as exc:  # reset, refused: a request lost
            return 0, repr(exc)

    def metric(self, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def workers(self) -> set[int]:
        found = set()
        for status in Path("/proc").glob("[0-9]*/status"):
            with contextlib.suppress(OSError):
                for line in status.read_text().splitlines():
                    if line.startswith("PPid:") and int(line.split()[1]) == self.process.pid:
                        found.add(int(status.parent.name))
        return found

    def rows(self) -> list[dict[str, Any]]:
        code = (
            "import json; from agents.models import Execution;"
            "print(json.dumps([{'id': str(e.id), 'status': e.status, 'n': e.metadata.get('n')}"
            " for e in Execution.objects.all()]))"
        )
        output = manage(self.var_dir, "shell", "-c", code, env=self.env)
        return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        finally:
            self.close()

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def redis_url() -> Iterator[str]:
    with private_redis() as (url, _):
        yield url


def test_recycled_workers_lose_no_request_in_flight_and_record_each_execution_once(
    tmp_path: Path, redis_url: str
) -> None:
    deployment = Deployment(
        tmp_path,
        redis_url,
        "--workers",
        "2",
        "--max-requests",
        str(MAX_REQUESTS),
        BREAKWATER_SERVE_MAX_REQUESTS_JITTER="4",
    )
    results: dict[int, tuple[int, str]] = {}
    try:
        wait_http(f"{deployment.url}/healthz", deadline_s=60)
        lock = threading.Lock()
        counter = iter(range(1_000_000))
        stop = threading.Event()

        def client() -> None:
            while not stop.is_set():
                with lock:
                    n = next(counter)
                results[n] = deployment.execute(n)

        clients = [threading.Thread(target=client, daemon=True) for _ in range(CONCURRENCY)]
        for thread in clients:
            thread.start()
        # Keep the stream going across several recycles of each worker.
        deadline = time.monotonic() + 120
        while deployment.metric("breakwater_process_recycles_total", reason="max_requests") < 4:
            assert time.monotonic() < deadline, deployment.log[-3000:]
            time.sleep(0.5)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
        assert deployment.metric("breakwater_process_recycles_total", reason="died") == 0
        assert deployment.stop() == 0
    finally:
        deployment.close()

    failed = {n: result for n, result in results.items() if result[0] != 200}
    assert failed == {}, deployment.log[-3000:]
    assert len(results) > 4 * MAX_REQUESTS
    # Every request's execution is in the database exactly once, succeeded.
    manage(tmp_path, "drain_records", "--once", env=deployment.env)  # nothing left: a no-op
    rows = deployment.rows()
    assert sorted(row["id"] for row in rows) == sorted(eid for _, eid in results.values())
    assert sorted(row["n"] for row in rows) == sorted(results)
    assert {row["status"] for row in rows} == {"succeeded"}
    assert len(re.findall(r"asks to be recycled: max_requests", deployment.log)) >= 4
    assert "Traceback" not in deployment.log


def test_a_worker_that_dies_is_restarted_and_counted(tmp_path: Path, redis_url: str) -> None:
    deployment = Deployment(tmp_path, redis_url, "--workers", "2")
    try:
        wait_http(f"{deployment.url}/healthz", deadline_s=60)
        deadline = time.monotonic() + 60
        while len(deployment.workers()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        victim = min(deployment.workers())
        os.kill(victim, signal.SIGKILL)
        while (
            victim in deployment.workers()
            or len(deployment.workers()) < 2
            or deployment.metric("breakwater_process_recycles_total", reason="died") < 1
        ):
            assert time.monotonic() < deadline, deployment.log[-3000:]
            time.sleep(0.2)
        assert deployment.execute(1)[0] == 200
        # The dead worker's live gauges are gone; the live ones have a series each.
        pids = set()
        with urllib.request.urlopen(f"{deployment.url}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith("breakwater_process_resident_memory_bytes{"):
                    pids.add(int(re.findall(r'pid="(\d+)"', line)[0]))
        assert victim not in pids
        assert pids <= deployment.workers()
        assert deployment.stop() == 0
    finally:
        deployment.close()
    assert re.search(rf"worker \d \(pid {victim}\) exited with -9; restarting", deployment.log)


def test_sigterm_stops_every_worker_and_leaves_nothing_behind(
    tmp_path: Path, redis_url: str
) -> None:
    deployment = Deployment(tmp_path, redis_url, "--workers", "2")
    try:
        wait_http(f"{deployment.url}/healthz", deadline_s=60)
        deadline = time.monotonic() + 60
        while len(deployment.workers()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = deployment.workers()
        assert deployment.stop() == 0
    finally:
        deployment.close()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()
    assert deployment.log.count("breakwater.serve stopped") == 3  # two workers, the supervisor
    assert "Traceback" not in deployment.log


def test_embedded_mode_refuses_more_than_one_worker(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "serve", "--port", str(free_port()), "--workers", "2"],
        cwd=ROOT,
        env=embedded_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "--workers: embedded mode runs one serving process" in done.stderr
    assert "set REDIS_URL" in done.stderr
