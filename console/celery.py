"""The Celery app for distributed mode (`celery -A console worker` / `celery -A console beat`)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import (
    beat_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("breakwater")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _install_schedule(sender: Celery, **_: object) -> None:
    """Beat runs the same schedule the embedded scheduler runs (console/schedule.py)."""
    from console.schedule import beat_schedule

    sender.conf.beat_schedule = beat_schedule()


@worker_process_init.connect
@worker_ready.connect
def _heartbeat_start(**_: object) -> None:
    """Each worker process (a prefork child; the main process, which runs the tasks of a solo
    or threads pool) holds a heartbeat: if it dies, the executions it claimed are settled or
    queued again within about a minute (agents.executions.processes)."""
    from agents.executions.processes import current_process

    current_process("worker").start()


@beat_init.connect
def _beat_heartbeat_start(**_: object) -> None:
    """Beat holds a heartbeat too (role ``beat``), so ``breakwater_processes{role="beat"}``
    says whether the schedule runs. It owns no executions; when it dies its row is marked dead
    like any other."""
    from agents.executions.processes import current_process

    current_process("beat").start()


@worker_process_shutdown.connect
@worker_shutdown.connect
def _heartbeat_stop(**_: object) -> None:
    """A worker process that stops cleanly says so: what it still owned is settled at once."""
    from agents.executions import processes

    heartbeat = processes._heartbeat
    if heartbeat is not None and heartbeat.identity.pid == os.getpid():
        heartbeat.stop()
