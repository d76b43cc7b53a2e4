"""Process liveness: who runs an execution, and whether that process is still alive.

Every process that runs executions (``serve``, a Celery worker process) has an identity: one
:class:`~agents.models.WorkerProcess` row, written when it starts, whose ``beat_at`` a daemon
thread moves every ``BREAKWATER_HEARTBEAT_S`` seconds. Executions carry their process's id
(``Execution.owner``: the journal's ``started`` event, or the worker's claim), so when a process
dies its executions can be found and settled (``agents.executions.queue.executions_settle_dead``)
within about a minute instead of an hour.

A process is dead when:

* it stopped (``stopped_at``: a clean stop) and still owns running executions;
* it ran on this host and its pid is gone (certain at once: an embedded ``serve`` restarted);
* its heartbeat is older than ``BREAKWATER_DEAD_AFTER_S`` and this process's own heartbeat has
  been writing for at least that long: after a database outage every heartbeat is old, and a
  process that has only just reached the database again must not declare the others dead before
  they have had the time to beat.

The heartbeat is a thread with its own database connection, so it beats while the event loop is
busy; a process frozen whole (SIGSTOP, a VM pause) stops beating, and is then rightly treated as
dead: its late answers are stored (a ``finished`` record overwrites the settled one) but its
money was already charged conservatively.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.db.models import Count, Q
from django.utils import timezone

from agents.models import WorkerProcess

log = logging.getLogger("breakwater.processes")


@dataclass(frozen=True)
class Identity:
    id: str
    kind: str
    host: str
    pid: int


class Heartbeat:
    """This process's identity and the thread that keeps its row's ``beat_at`` fresh."""

    def __init__(self, kind: str) -> None:
        self.identity = Identity(str(uuid.uuid4()), kind, socket.gethostname(), os.getpid())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Monotonic time since when every beat has succeeded (None: the last one failed).
        self._healthy_since: float | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._write(insert=True)
            self._thread = threading.Thread(target=self._loop, name="bw-heartbeat", daemon=True)
            self._thread.start()

    def healthy_for(self) -> float:
        """Seconds this process's heartbeat has been writing without a failure."""
        since = self._healthy_since
        return 0.0 if since is None else time.monotonic() - since

    def _write(self, *, insert: bool = False) -> None:
        now = timezone.now()
        try:
            if insert:
                WorkerProcess.objects.update_or_create(
                    id=self.identity.id,
                    defaults={
                        "kind": self.identity.kind,
                        "host": self.identity.host[:255],
                        "pid": self.identity.pid,
                        "started_at": now,
                        "beat_at": now,
                    },
                )
            else:
                WorkerProcess.objects.filter(id=self.identity.id).update(beat_at=now)
        except Exception:
            self._healthy_since = None
            log.warning("heartbeat of %s failed", self.identity.id, exc_info=True)
            return
        if self._healthy_since is None:
            self._healthy_since = time.monotonic()

    def _loop(self) -> None:
        while not self._stop.wait(settings.BREAKWATER_HEARTBEAT_S):
            try:
                self._write(insert=self._healthy_since is None)
            finally:
                connection.close()  # one write every few seconds: no connection held between

    def stop(self) -> None:
        """A clean stop: the row says so (its executions are orphans from now on)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        try:
            WorkerProcess.objects.filter(id=self.identity.id).update(stopped_at=timezone.now())
        except Exception:
            log.warning("could not mark %s stopped", self.identity.id, exc_info=True)
        finally:
            close_old_connections()


_heartbeat: Heartbeat | None = None
_heartbeat_lock = threading.Lock()


def current_process(kind: str = "serve") -> Heartbeat:
    """This process's heartbeat (its identity is ``.identity.id``), created on first use. A
    forked child (a Celery worker process) gets one of its own."""
    global _heartbeat
    with _heartbeat_lock:
        if _heartbeat is None or _heartbeat.identity.pid != os.getpid():
            _heartbeat = Heartbeat(kind)
        return _heartbeat


def process_owner_id(kind: str = "serve") -> str:
    """The id executions run here carry (``Execution.owner``). Only a process whose heartbeat
    runs (``manage.py serve``, a Celery worker: their start-up calls :meth:`Heartbeat.start`)
    has a row, and only a process with a row is ever judged dead: a script or a test that runs
    an execution in-process leaves it to the stale-execution reaper."""
    return current_process(kind).identity.id


async def process_is_dead(process_id: str) -> bool:
    """Whether the process ``process_id`` was judged dead (:func:`processes_mark_dead`). A
    process without a row (a script, a test) is never dead. One indexed lookup."""
    return await WorkerProcess.objects.filter(pk=process_id, dead_at__isnull=False).aexists()


def pid_gone(pid: int) -> bool:
    """True only when no process has ``pid`` on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def processes_mark_dead(*, now: datetime | None = None) -> list[str]:
    """Find the processes that are dead (see the module doc) and mark them; returns the ids of
    every process marked dead so far whose executions may still need settling (marked in the
    last day)."""
    now = now or timezone.now()
    me = _heartbeat if _heartbeat is not None and _heartbeat.identity.pid == os.getpid() else None
    dead_after = timedelta(seconds=settings.BREAKWATER_DEAD_AFTER_S)
    host = socket.gethostname()
    candidates = WorkerProcess.objects.filter(dead_at__isnull=True).exclude(
        id=me.identity.id if me else ""
    )
    may_judge_age = me is not None and me.healthy_for() >= dead_after.total_seconds()
    for row in candidates.only("id", "host", "pid", "beat_at", "stopped_at"):
        stale = row.beat_at < now - dead_after
        if row.stopped_at is not None:
            why = "stopped"
        elif row.host == host and (pid_gone(row.pid) or (me and row.pid == me.identity.pid)):
            why = f"pid {row.pid} gone"
        elif stale and may_judge_age:
            why = f"no heartbeat since {row.beat_at:%H:%M:%S}"
        else:
            continue
        if WorkerProcess.objects.filter(id=row.id, dead_at__isnull=True).update(dead_at=now):
            log.warning("process %s (%s:%s) is dead: %s", row.id, row.host, row.pid, why)
    return list(
        WorkerProcess.objects.filter(dead_at__gte=now - timedelta(days=1)).values_list(
            "id", flat=True
        )
    )


def processes_prune(*, now: datetime | None = None, keep_days: int = 7) -> int:
    """Forget processes dead or stopped for longer than ``keep_days``."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=keep_days)
    deleted, _ = WorkerProcess.objects.filter(beat_at__lt=cutoff).delete()
    return deleted


def processes_live_by_role(*, now: datetime | None = None) -> dict[str, int]:
    """Live processes per role (``serve``, ``worker``, ...), for ``breakwater_processes``.

    Live: started, not stopped, not marked dead, and beating within ``BREAKWATER_DEAD_AFTER_S``.
    Every role with a row (rows are kept a week, :func:`processes_prune`) is listed, at 0 when
    none of its processes is live, so that a role that went down reads 0 instead of vanishing.
    One query.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BREAKWATER_DEAD_AFTER_S)
    rows = (
        WorkerProcess.objects.order_by()
        .values("kind")
        .annotate(
            live=Count(
                "id",
                filter=Q(dead_at__isnull=True, stopped_at__isnull=True, beat_at__gte=cutoff),
            )
        )
    )
    return {row["kind"]: int(row["live"]) for row in rows}
