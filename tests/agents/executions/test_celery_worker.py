"""Queued executions on a real ``celery -A console worker`` over Redis, killed mid-run.

The worker is a subprocess on the test's PostgreSQL database (pytest-django's ``test_<name>``,
committed data: ``transaction=True``) and the test's Redis, consuming a queue of its own. Its
settings are the project's plus a broker visibility timeout of 1 s (the redelivery delay after a
worker dies; production keeps a longer one) and a claim grace of 0.5 s.

The kill test repeats: queue an execution of an agent whose (simulated) provider takes 300 ms,
wait until a worker started running it (its ``running`` event on the channel layer), SIGKILL the
worker, start a new one. The broker delivers the message again; the new worker reclaims the
execution and runs it. Exactly-once is checked on what clients and the ledger see: per
execution two ``running`` events (the killed run and the rerun), one ``completed`` event, one
finished row, one ledger entry, and the journal's events drained afterwards change nothing.
``BREAKWATER_KILL_TRIALS`` sets the number of trials: 12 in the suite (about 25 s), 50 in
``make chaos``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, connections

from agents.config.apply import config_apply, config_parse
from agents.executions import queue as executions
from agents.executions.live import group_name
from agents.models import Execution
from budgets.models import SpendEntry

ROOT = Path(__file__).resolve().parents[3]
TRIALS = int(os.environ.get("BREAKWATER_KILL_TRIALS", "12"))
DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 300, error_rate: 0, seed: 3}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: queued, model: m, max_tokens: 32, timeout_s: 1}
"""
WORKER_SETTINGS = """
from console.settings import *  # noqa: F403

# Redeliver a dead worker's message after 1 s, swept every second (production: longer).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 1,
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}
BREAKWATER_EXECUTION_CLAIM_GRACE_S = 0.5
"""

pytestmark = pytest.mark.django_db(transaction=True)


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
        f"/{db['NAME']}"
    )


class CeleryWorker:
    """``celery -A console worker --pool=solo`` on one queue, started and killed on demand."""

    def __init__(self, env: dict[str, str], queue: str, logs: Path) -> None:
        self.env, self.queue, self.logs = env, queue, logs
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0
        self.log: Path | None = None

    def start(self) -> float:
        """Start a worker and wait until it consumes; returns how long that took."""
        began = time.monotonic()
        self.started += 1
        self.log = self.logs / f"worker-{self.started}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "celery", "-A", "console", "worker",
                    "--pool=solo", "--concurrency=1", "-Q", self.queue,
                    "-n", f"bwtest{self.started}@%h", "-l", "info",
                    "--without-gossip", "--without-mingle", "--without-heartbeat",
                ],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = began + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited at start:\n{self.tail()}")
            if b" ready." in self.log.read_bytes():
                return time.monotonic() - began
            time.sleep(0.02)
        raise AssertionError(f"worker not ready in 30 s:\n{self.tail()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log else ""


def worker_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a worker on the test's database and Redis, with WORKER_SETTINGS."""
    (tmp_path / "bw_worker_settings.py").write_text(WORKER_SETTINGS)
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "bw_worker_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
        "DATABASE_URL": _database_url(),
        "REDIS_URL": redis_url,
        "BREAKWATER_VAR_DIR": str(tmp_path / "var"),
        "SECRET_KEY": "celery-worker-test-secret-key-0123456789abcdef",
    }


@pytest.fixture
def celery_worker(
    redis_url: str, postgres: None, tmp_path: Path, settings: Any
) -> Iterator[CeleryWorker]:
    config_apply(document=config_parse(DOC))
    queue = f"bwtest-{os.getpid()}-{time.monotonic_ns()}"
    settings.BREAKWATER_EXECUTION_QUEUE = queue
    worker = CeleryWorker(worker_env(redis_url, tmp_path), queue, tmp_path)
    yield worker
    worker.stop()
    from core.redis import get_redis

    get_redis().delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}")


class Watcher:
    """Every live event of the executions it follows, from the Redis channel layer."""

    def __init__(self, redis_url: str) -> None:
        from channels_redis.core import RedisChannelLayer

        # The project's layer, but a socket timeout above the layer's 5 s blocking reads
        # (redis-py's default of 5 s makes an idle receive() fail now and then).
        self.layer = RedisChannelLayer(
            hosts=[{"address": redis_url, "socket_timeout": 30}],
            prefix=get_channel_layer().prefix,
        )
        self.events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.arrived = asyncio.Event()
        self.channel = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.channel = await self.layer.new_channel()
        self._task = asyncio.create_task(self._receive())

    async def follow(self, execution_id: str) -> None:
        await self.layer.group_add(group_name(execution_id), self.channel)

    async def _receive(self) -> None:
        while True:
            message = await self.layer.receive(self.channel)
            self.events[message["execution_id"]].append(message)
            self.arrived.set()

    async def wait_for(self, execution_id: str, kind: str, count: int = 1) -> None:
        deadline = time.monotonic() + 30
        while self.count(execution_id, kind) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{execution_id}: no {kind} x{count}: {self.events}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), 0.5)

    def count(self, execution_id: str, kind: str) -> int:
        return sum(
            1
            for m in self.events[execution_id]
            if m["type"] == kind or (m["type"] == "execution.status" and m["status"] == kind)
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.layer.close_pools()


@pytest.fixture
async def watcher(redis_url: str) -> AsyncIterator[Watcher]:
    watcher = Watcher(redis_url)
    await watcher.start()
    yield watcher
    await watcher.stop()
    await sync_to_async(connections.close_all)()  # the async ORM thread's connection


def _queue_one() -> str:
    """What ``executions.execution_enqueue`` writes, without dispatching yet: the watcher must
    follow the execution before a worker can finish it."""
    return str(
        Execution.objects.create(
            agent_name="queued", status="queued", input=[{"role": "user", "content": "hi"}]
        ).pk
    )


async def _enqueue(watcher: Watcher) -> str:
    execution_id = await sync_to_async(_queue_one)()
    await watcher.follow(execution_id)
    await sync_to_async(executions.execution_dispatch)(execution_id=execution_id, timeout_s=1.0)
    return execution_id


async def _drain_journal() -> int:
    from agents.executions.recording import redis_drain
    from core.redis import get_async_redis

    drain, events = redis_drain(get_async_redis()), 0
    while True:
        result = await drain()
        events += result.events
        if not result.full:
            return events


async def test_a_queued_execution_runs_on_a_real_worker_and_pushes_its_completion(
    celery_worker: CeleryWorker, watcher: Watcher
) -> None:
    await asyncio.to_thread(celery_worker.start)
    execution_id = await _enqueue(watcher)
    await watcher.wait_for(execution_id, "execution.completed")
    row = await Execution.objects.aget(pk=execution_id)
    assert row.status == "succeeded", celery_worker.tail()
    assert row.output
    completed = [m for m in watcher.events[execution_id] if m["type"] == "execution.completed"]
    assert completed[0]["result"]["output"] == row.output
    assert watcher.count(execution_id, "running") == 1
    assert await SpendEntry.objects.filter(execution_id=execution_id).acount() == 1
    await _drain_journal()
    assert await SpendEntry.objects.filter(execution_id=execution_id).acount() == 1


async def test_a_worker_killed_mid_run_leaves_each_execution_completed_exactly_once(
    celery_worker: CeleryWorker, watcher: Watcher
) -> None:
    started = time.monotonic()
    startups = [await asyncio.to_thread(celery_worker.start)]
    ids: list[str] = []
    for _ in range(TRIALS):
        execution_id = await _enqueue(watcher)
        ids.append(execution_id)
        await watcher.wait_for(execution_id, "running")  # the run is in its provider call
        await asyncio.sleep(random.uniform(0, 0.1))  # spread the kill points over the call
        await asyncio.to_thread(celery_worker.kill)
        row = await Execution.objects.aget(pk=execution_id)
        assert row.status == "running", "the kill came after the run ended"
        startups.append(await asyncio.to_thread(celery_worker.start))
        await watcher.wait_for(execution_id, "execution.completed")
    elapsed = time.monotonic() - started
    journal_events = await _drain_journal()

    rows = [r async for r in Execution.objects.filter(pk__in=ids)]
    assert len(rows) == TRIALS
    assert {r.status for r in rows} == {"succeeded"}, celery_worker.tail()
    entries = [e async for e in SpendEntry.objects.filter(execution_id__in=ids)]
    assert len(entries) == TRIALS  # one ledger row each: 0 duplicates, 0 missing
    assert {e.execution_id for e in entries} == {r.pk for r in rows}
    costs = {r.pk: r.cost_usd for r in rows}
    assert all(e.cost_usd == costs[e.execution_id] > 0 for e in entries)
    for execution_id in ids:
        assert watcher.count(execution_id, "running") == 2  # the killed run, the rerun
        assert watcher.count(execution_id, "execution.completed") == 1
    print(
        f"\n{TRIALS} kill trials in {elapsed:.1f}s ({elapsed / TRIALS:.2f}s each); worker "
        f"start {min(startups):.2f}-{max(startups):.2f}s; {journal_events} journal events "
        "drained afterwards, ledger unchanged"
    )
