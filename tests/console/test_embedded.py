"""The embedded scheduler: Celery beat's role, in-process (the worker: tests/core/test_worker.py)."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import current_app

from console.embedded import EmbeddedScheduler
from console.schedule import JOBS, Job, beat_schedule
from core.worker import EmbeddedWorker

ROOT = Path(__file__).resolve().parents[2]


class FakeWorker:
    """Records submissions; the test decides when each job finishes."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.futures: list[Future[Any]] = []

    def submit(self, name: str, **kwargs: Any) -> Future[Any]:
        self.submitted.append(name)
        future: Future[Any] = Future()
        self.futures.append(future)
        return future


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


JOBS_UNDER_TEST = (Job("fast", "tasks.fast", every_s=10), Job("slow", "tasks.slow", every_s=30))


def _scheduler(worker: FakeWorker, clock: FakeClock) -> EmbeddedScheduler:
    return EmbeddedScheduler(worker=worker, jobs=JOBS_UNDER_TEST, clock=clock)  # type: ignore[arg-type]


# --- EmbeddedScheduler.tick ------------------------------------------------------------------


def test_tick_submits_only_due_jobs_and_returns_the_wait_for_the_next_one() -> None:
    worker, clock = FakeWorker(), FakeClock()
    scheduler = _scheduler(worker, clock)
    next_due = {"fast": 1000.0, "slow": 1005.0}

    assert scheduler.tick(next_due) == 5.0
    assert worker.submitted == ["tasks.fast"]
    assert next_due == {"fast": 1010.0, "slow": 1005.0}

    clock.now = 1005.0
    assert scheduler.tick(next_due) == 5.0
    assert worker.submitted == ["tasks.fast", "tasks.slow"]
    assert next_due == {"fast": 1010.0, "slow": 1035.0}


def test_tick_before_anything_is_due_submits_nothing() -> None:
    worker, clock = FakeWorker(), FakeClock()
    next_due = {"fast": 1007.5, "slow": 1020.0}
    assert _scheduler(worker, clock).tick(next_due) == 7.5
    assert worker.submitted == []
    assert next_due == {"fast": 1007.5, "slow": 1020.0}


def test_tick_skips_a_job_that_is_still_running(caplog: pytest.LogCaptureFixture) -> None:
    worker, clock = FakeWorker(), FakeClock()
    scheduler = _scheduler(worker, clock)
    next_due = {"fast": 1000.0, "slow": 2000.0}
    scheduler.tick(next_due)
    assert worker.submitted == ["tasks.fast"]

    clock.now = 1010.0  # due again, but the first run has not finished
    with caplog.at_level(logging.WARNING, logger="breakwater.embedded"):
        assert scheduler.tick(next_due) == 10.0
    assert worker.submitted == ["tasks.fast"]
    assert "job fast still running; skipping this tick" in caplog.text
    assert next_due["fast"] == 1020.0  # skipped, not retried at once

    worker.futures[0].set_result(None)
    clock.now = 1020.0
    scheduler.tick(next_due)
    assert worker.submitted == ["tasks.fast", "tasks.fast"]


def test_tick_runs_a_job_again_after_it_failed() -> None:
    worker, clock = FakeWorker(), FakeClock()
    scheduler = _scheduler(worker, clock)
    next_due = {"fast": 1000.0, "slow": 2000.0}
    scheduler.tick(next_due)
    worker.futures[0].set_exception(RuntimeError("boom"))
    clock.now = 1010.0
    scheduler.tick(next_due)
    assert worker.submitted == ["tasks.fast", "tasks.fast"]


def test_tick_catches_up_late_jobs_without_a_burst() -> None:
    worker, clock = FakeWorker(), FakeClock()
    scheduler = _scheduler(worker, clock)
    next_due = {"fast": 1000.0, "slow": 1000.0}
    clock.now = 1100.0  # the loop was starved for 100 s
    assert scheduler.tick(next_due) == 10.0
    assert worker.submitted == ["tasks.fast", "tasks.slow"]  # once each, not ten times
    assert next_due == {"fast": 1110.0, "slow": 1130.0}


def test_tick_never_asks_for_a_busy_loop() -> None:
    worker, clock = FakeWorker(), FakeClock()
    next_due = {"fast": 1000.001, "slow": 2000.0}
    assert _scheduler(worker, clock).tick(next_due) == 0.05


def test_tick_without_jobs_sleeps_an_hour() -> None:
    scheduler = EmbeddedScheduler(worker=FakeWorker(), jobs=(), clock=FakeClock())  # type: ignore[arg-type]
    assert scheduler.tick({}) == 3600.0


async def test_the_scheduler_starts_and_stops_cleanly() -> None:
    worker = FakeWorker()
    scheduler = EmbeddedScheduler(worker=worker, jobs=JOBS_UNDER_TEST)  # type: ignore[arg-type]
    scheduler.start()
    await asyncio.sleep(0)
    await scheduler.stop()
    assert worker.submitted == []  # the first runs are a few seconds after start


def test_beat_runs_the_same_schedule_as_the_embedded_scheduler() -> None:
    current_app.autodiscover_tasks(force=True)  # as `celery beat` and `celery worker` do
    schedule = beat_schedule()
    assert set(schedule) == {job.name for job in JOBS}
    for job in JOBS:
        assert schedule[job.name]["task"] == job.task
        assert schedule[job.name]["schedule"] == job.every_s
        assert job.task in current_app.tasks, f"{job.task} is not a registered Celery task"


@pytest.mark.django_db(transaction=True)
async def test_the_scheduler_drives_the_real_worker_through_a_real_job() -> None:
    from datetime import timedelta

    from asgiref.sync import sync_to_async
    from django.db import connection
    from django.utils import timezone

    from agents.models import Execution

    created = timezone.now() - timedelta(days=1)
    execution = await sync_to_async(Execution.objects.create)(
        agent_name="support", status="running", created_at=created
    )
    worker, clock = EmbeddedWorker(threads=1), FakeClock()
    scheduler = EmbeddedScheduler(worker=worker, jobs=JOBS, clock=clock)
    scheduler.tick({job.name: clock.now for job in JOBS})
    await worker.stop()

    await sync_to_async(execution.refresh_from_db)()
    await sync_to_async(lambda: connection.close())()  # that thread's own, before teardown
    assert execution.status == "failed"


@pytest.mark.django_db(transaction=True)
async def test_the_embedded_scheduler_runs_retention_on_the_real_worker() -> None:
    from asgiref.sync import sync_to_async
    from django.db import connection
    from django.utils import timezone

    from agents.models import Execution

    def create(days: int, status: str) -> Execution:
        at = timezone.now() - timedelta(days=days)
        return Execution.objects.create(agent_name="support", status=status, created_at=at)

    old = await sync_to_async(create)(40, "succeeded")
    old_queued = await sync_to_async(create)(40, "queued")
    recent = await sync_to_async(create)(3, "succeeded")
    [job] = [job for job in JOBS if job.task == "agents.tasks.executions_prune"]
    worker, clock = EmbeddedWorker(threads=1), FakeClock()
    EmbeddedScheduler(worker=worker, jobs=(job,), clock=clock).tick({job.name: clock.now})
    await worker.stop()

    left = await sync_to_async(lambda: set(Execution.objects.values_list("id", flat=True)))()
    await sync_to_async(lambda: connection.close())()
    assert left == {old_queued.id, recent.id}
    assert old.id not in left


@pytest.mark.parametrize(
    ("task", "every_s"),
    [
        ("agents.tasks.executions_prune", 300),
        ("agents.tasks.executions_requeue_stale", 60),
        ("budgets.tasks.rollups_advance", 15),
        ("budgets.tasks.budgets_reconcile", 300),
        ("budgets.tasks.cost_spike_detect", 60),
    ],
)
def test_a_periodic_job_runs_at_its_interval_under_beat_and_the_embedded_scheduler(
    task: str, every_s: int
) -> None:
    # Beat: the app finalized as `celery beat` does it, read by beat's own scheduler class.
    from celery.beat import Scheduler

    from console.celery import app

    app.autodiscover_tasks(force=True)
    app.finalize()
    [entry] = [e for e in Scheduler(app=app).schedule.values() if e.task == task]
    assert entry.schedule.run_every == timedelta(seconds=every_s)
    assert task in app.tasks

    # Embedded: the declared jobs, ticked every second for two intervals on a fake clock.
    worker, clock = FakeWorker(), FakeClock()
    scheduler = EmbeddedScheduler(worker=worker, clock=clock)  # type: ignore[arg-type]
    next_due = {job.name: clock.now for job in JOBS}
    runs = []
    for _ in range(2 * every_s + 1):
        seen = len(worker.submitted)
        scheduler.tick(next_due)
        runs += [clock.now for name in worker.submitted[seen:] if name == task]
        for future in worker.futures:
            if not future.done():
                future.set_result(None)  # each run finishes within its second
        clock.now += 1
    assert runs == [1000.0, 1000.0 + every_s, 1000.0 + 2 * every_s]
