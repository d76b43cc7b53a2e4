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


# --- memory watch and recycling (docs/OPERATIONS.md "Memory and recycling") ----------------------
# BREAKWATER_WORKER_MAX_TASKS / BREAKWATER_WORKER_MAX_MEMORY_MB become Celery's
# worker_max_tasks_per_child / worker_max_memory_per_child (console/settings.py): the prefork pool
# replaces a worker process after that many tasks, or after the task that took its peak RSS over
# the limit; the task in hand always finishes first. Billiard's exit code says which.

EX_RECYCLE = 0x9B  # billiard.pool.EX_RECYCLE: the child left to be replaced


@worker_process_init.connect
@worker_ready.connect
def _memory_watch_start(**_: object) -> None:
    """Every worker process (prefork children and the main process) samples its RSS."""
    from incidents.memory import memory_watch_start_once

    memory_watch_start_once("worker")


@beat_init.connect
def _memory_watch_start_beat(**_: object) -> None:
    from incidents.memory import memory_watch_start_once

    memory_watch_start_once("beat")


def recycle_reason(exitcode: object, peak_rss_kib: int, max_memory_kib: int | None) -> str | None:
    """Why a prefork child exited: ``max_rss``, ``max_tasks``, or None (not a recycle)."""
    if exitcode != EX_RECYCLE:
        return None
    if max_memory_kib and peak_rss_kib > max_memory_kib:
        return "max_rss"
    return "max_tasks"


@worker_process_shutdown.connect
def _memory_watch_stop(exitcode: object = None, **_: object) -> None:
    """A worker process leaving: count a recycle, stop its watch (which resolves its memory
    incident)."""
    import resource

    from core.memory import RECYCLES
    from incidents.memory import memory_watch_stop

    reason = recycle_reason(
        exitcode,
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        app.conf.worker_max_memory_per_child,
    )
    if reason is not None:
        RECYCLES.labels(role="worker", reason=reason).inc()
    memory_watch_stop()
    _forget_live_gauges()


def _forget_live_gauges() -> None:
    """This process's live gauges (its RSS series) leave the multiprocess directory with it."""
    from agents.metrics import mark_process_dead

    mark_process_dead(os.getpid())


@worker_shutdown.connect
def _memory_watch_stop_main(**_: object) -> None:
    from incidents.memory import memory_watch_stop

    memory_watch_stop()
    _forget_live_gauges()
