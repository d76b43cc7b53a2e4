"""The in-process worker: Celery's worker role, for the embedded mode."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from celery import current_app

from core.worker import EmbeddedWorker

ROOT = Path(__file__).resolve().parents[2]
RELEASE = threading.Event()
CALLS: list[dict[str, Any]] = []


@current_app.task(name="tests.worker.record")
def record(**kwargs: Any) -> str:
    CALLS.append(kwargs)
    return "recorded"


@current_app.task(name="tests.worker.wait_for_release")
def wait_for_release() -> str:
    if not RELEASE.wait(timeout=10):
        raise TimeoutError("never released")
    CALLS.append({"released": True})
    return "finished"


@current_app.task(name="tests.worker.explode")
def explode() -> None:
    raise RuntimeError("boom")


@pytest.fixture(autouse=True)
def _clean_state() -> Any:
    CALLS.clear()
    RELEASE.clear()
    yield
    RELEASE.set()  # never leave a worker thread waiting


async def test_the_worker_runs_a_registered_celery_task_body() -> None:
    worker = EmbeddedWorker(threads=2)
    future = worker.submit("tests.worker.record", agent="support", n=3)
    assert await asyncio.wrap_future(future) == "recorded"
    assert CALLS == [{"agent": "support", "n": 3}]
    await worker.stop()


async def test_stop_waits_for_running_tasks_to_finish() -> None:
    worker = EmbeddedWorker(threads=2, grace_s=10)
    future = worker.submit("tests.worker.wait_for_release")
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()  # the task is blocked, so stop() must still be waiting
    assert not future.done()

    RELEASE.set()
    await asyncio.wait_for(stopping, timeout=10)
    assert future.result() == "finished"
    assert CALLS == [{"released": True}]


async def test_stop_gives_up_after_the_grace_period() -> None:
    worker = EmbeddedWorker(threads=1, grace_s=0.1)
    future = worker.submit("tests.worker.wait_for_release")
    await asyncio.wait_for(worker.stop(), timeout=5)
    assert not future.done()  # still running: stop() returned without it
    RELEASE.set()
    assert await asyncio.wrap_future(future) == "finished"


async def test_submit_after_stop_is_refused() -> None:
    worker = EmbeddedWorker()
    await worker.stop()
    with pytest.raises(RuntimeError, match="embedded worker is shut down"):
        worker.submit("tests.worker.record")
    assert CALLS == []


async def test_a_failing_task_is_logged_and_the_worker_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = EmbeddedWorker(threads=1)
    with caplog.at_level(logging.ERROR, logger="breakwater.worker"):
        failed = worker.submit("tests.worker.explode")
        with pytest.raises(RuntimeError, match="boom"):
            await asyncio.wrap_future(failed)
        ok = worker.submit("tests.worker.record", x=1)
        assert await asyncio.wrap_future(ok) == "recorded"
    await worker.stop()
    assert "task tests.worker.explode failed" in caplog.text


async def test_an_unknown_task_fails_its_future() -> None:
    worker = EmbeddedWorker(threads=1)
    future = worker.submit("tests.worker.no_such_task")
    with pytest.raises(KeyError):
        await asyncio.wrap_future(future)
    await worker.stop()


def test_a_fresh_process_registers_every_scheduled_task_when_the_worker_starts(
    tmp_path: Path,
) -> None:
    # In a fresh process, as under `manage.py serve`: nothing else has imported the tasks.
    code = (
        "import django; django.setup()\n"
        "from celery import current_app\n"
        "from core.worker import EmbeddedWorker\n"
        "from console.schedule import JOBS\n"
        "EmbeddedWorker()\n"
        "missing = [job.task for job in JOBS if job.task not in current_app.tasks]\n"
        "print('missing:', missing)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="console.settings", BREAKWATER_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "missing: []"
