"""Celery worker recycling from the environment: a real ``celery -A console worker`` (prefork, one
child) with ``BREAKWATER_WORKER_MAX_TASKS=2`` replaces its child every two tasks, counts each
recycle, and every worker process publishes its RSS.

The worker runs on the test's PostgreSQL database (committed data: ``transaction=True``) and the
test's Redis, on a queue of its own, with a multiprocess metrics directory the test reads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from console.celery import EX_RECYCLE, app, recycle_reason

ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        f"/{db['NAME']}"
    )


def _samples(directory: Path, name: str) -> list[tuple[dict[str, str], float]]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return [
        (sample.labels, sample.value)
        for metric in registry.collect()
        for sample in metric.samples
        if sample.name == name
    ]


def test_a_recycled_child_is_told_apart_from_a_child_that_stopped() -> None:
    assert recycle_reason(EX_RECYCLE, peak_rss_kib=900_000, max_memory_kib=500_000) == "max_rss"
    assert recycle_reason(EX_RECYCLE, peak_rss_kib=100_000, max_memory_kib=500_000) == "max_tasks"
    assert recycle_reason(EX_RECYCLE, peak_rss_kib=100_000, max_memory_kib=None) == "max_tasks"
    assert recycle_reason(0, peak_rss_kib=900_000, max_memory_kib=500_000) is None


@pytest.mark.django_db(transaction=True)
def test_a_prefork_worker_replaces_its_child_every_max_tasks_and_counts_it(
    redis_url: str, postgres: None, tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    queue = f"bwrecycle-{os.getpid()}-{time.monotonic_ns()}"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "BREAKWATER_VAR_DIR": str(tmp_path / "var"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics),
        "BREAKWATER_WORKER_MAX_TASKS": "2",
        "BREAKWATER_WORKER_MAX_MEMORY_MB": "4096",
        "BREAKWATER_MEMORY_SAMPLE_S": "0.2",
        "BREAKWATER_MEMORY_WINDOW_S": "5",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "console", "worker",
                "--pool=prefork", "--concurrency=1", "-Q", queue, "-n", f"{queue}@%h",
                "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat",
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b" ready." not in log.read_bytes():
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        for _ in range(5):  # an idempotent periodic job: no arguments, a quick query
            app.send_task("agents.tasks.executions_reap_stale", queue=queue)

        def recycles() -> float:
            return sum(
                value
                for labels, value in _samples(metrics, "breakwater_process_recycles_total")
                if labels == {"role": "worker", "reason": "max_tasks"}
            )

        while recycles() < 2 or log.read_bytes().count(b"succeeded in") < 5:
            assert worker.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        # The main process and its live child publish their RSS; a recycled child's series goes.
        rss = _samples(metrics, "breakwater_process_resident_memory_bytes")
        assert {labels["role"] for labels, _ in rss} == {"worker"}
        assert all(value > 10 * 2**20 for _, value in rss)
        pids = {int(labels["pid"]) for labels, _ in rss}
        assert worker.pid in pids
        assert all(Path(f"/proc/{pid}").exists() for pid in pids), pids
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert recycles() == 2  # after tasks 2 and 4; the third child stopped with the worker
    text = log.read_text()
    assert text.count("succeeded in") == 5
    assert "Traceback" not in text
