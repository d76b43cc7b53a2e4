"""Memory growth becomes an incident: one per process, ``memory:<role>:<hostname>:<pid>``.

:func:`memory_watch_start` starts this process's :class:`core.memory.MemoryWatch` with the
settings (``BREAKWATER_MEMORY_*``); when its detector fires, an incident of kind
``memory_growth`` opens; it resolves when the growth stops, or when the process stops (a clean
exit, a recycle: :meth:`MemoryWatch.stop`), or, for a process that died, when its supervisor
reaps it (:func:`memory_incident_resolve_dead`). The incident writes run on the watch's own
thread, never on an event loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections

from core.memory import MB, GrowthSettings, MemoryWatch, Verdict, rss_bytes
from incidents.models import Severity

log = logging.getLogger("breakwater.memory")


def growth_settings() -> GrowthSettings:
    """The detector's settings from ``BREAKWATER_MEMORY_*`` (console/settings.py)."""
    return GrowthSettings(
        window_s=settings.BREAKWATER_MEMORY_WINDOW_S,
        warmup_s=settings.BREAKWATER_MEMORY_WARMUP_S,
        growth_bytes_per_s=settings.BREAKWATER_MEMORY_GROWTH_MB_PER_HOUR * MB / 3600,
        limit_bytes=int(settings.BREAKWATER_MEMORY_LIMIT_MB * MB),
    )


def memory_dedup_key(role: str, pid: int, host: str | None = None) -> str:
    return f"memory:{role}:{host or socket.gethostname()}:{pid}"


def _mib(value: float) -> str:
    return f"{value / MB:.1f} MiB"


def _describe(verdict: Verdict) -> str:
    slope = verdict.slope or 0.0
    if verdict.reason == "limit":
        return f"RSS {_mib(verdict.rss)} is over the limit ({settings.BREAKWATER_MEMORY_LIMIT_MB:g} MiB)"
    return f"RSS {_mib(verdict.rss)}, growing {_mib(slope * 3600)}/hour (R² {verdict.r2 or 0:.2f})"


def _data(role: str, pid: int, verdict: Verdict) -> dict[str, object]:
    return {
        "role": role,
        "host": socket.gethostname(),
        "pid": pid,
        "rss_bytes": verdict.rss,
        "slope_bytes_per_s": round(verdict.slope or 0.0, 3),
        "r2": round(verdict.r2 or 0.0, 4),
        "reason": verdict.reason,
    }


def memory_incident_open(role: str, pid: int, verdict: Verdict) -> None:
    from incidents.services import incident_open

    close_old_connections()
    try:
        incident_open(
            kind="memory_growth",
            dedup_key=memory_dedup_key(role, pid),
            title=f"Memory growth: {role} process {pid} on {socket.gethostname()}",
            message=_describe(verdict),
            severity=Severity.MAJOR,
            data=_data(role, pid, verdict),
        )
    finally:
        close_old_connections()


def memory_incident_resolve(role: str, pid: int, message: str, verdict: Verdict | None) -> None:
    from incidents.services import incident_resolve_by_key

    close_old_connections()
    try:
        incident_resolve_by_key(
            dedup_key=memory_dedup_key(role, pid),
            message=message,
            data=_data(role, pid, verdict) if verdict is not None else None,
        )
    finally:
        close_old_connections()


def memory_incident_resolve_dead(role: str, pid: int, reason: str) -> None:
    """A supervisor reaped ``pid``: its memory incident (if one is open) is over."""
    try:
        memory_incident_resolve(role, pid, f"process exited ({reason})", None)
    except Exception:
        log.exception("could not resolve the memory incident of %s process %d", role, pid)


def memory_watch(
    role: str,
    *,
    on_sample: Callable[[int], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    read_rss: Callable[[], int] = rss_bytes,
) -> MemoryWatch:
    """This process's memory watch, not started, whose detector opens and resolves the
    process's ``memory_growth`` incident."""
    pid = os.getpid()
    watch: MemoryWatch | None = None

    def on_open(verdict: Verdict) -> None:
        log.warning("memory growth in %s process %d: %s", role, pid, _describe(verdict))
        memory_incident_open(role, pid, verdict)

    def on_clear(verdict: Verdict) -> None:
        stopping = watch is not None and watch.stopping
        message = "process stopped" if stopping else "growth stopped: " + _describe(verdict)
        memory_incident_resolve(role, pid, message, verdict)

    watch = MemoryWatch(
        role,
        growth_settings(),
        every_s=settings.BREAKWATER_MEMORY_SAMPLE_S,
        on_open=on_open,
        on_clear=on_clear,
        on_sample=on_sample,
        clock=clock,
        read_rss=read_rss,
    )
    return watch


def memory_watch_start(role: str, *, on_sample: Callable[[int], None] | None = None) -> MemoryWatch:
    """Start this process's memory watch (every ``BREAKWATER_MEMORY_SAMPLE_S`` seconds)."""
    return memory_watch(role, on_sample=on_sample).start()


_watch: MemoryWatch | None = None


def memory_watch_start_once(role: str) -> MemoryWatch:
    """This process's one watch (a forked child gets its own): for processes whose start-up
    hooks may fire more than once (Celery's ``worker_process_init`` and ``worker_ready``)."""
    global _watch
    if _watch is None or _watch.pid != os.getpid():
        from core.memory import RECYCLES

        for reason in ("max_tasks", "max_rss") if role == "worker" else ():
            RECYCLES.labels(role=role, reason=reason)
        _watch = memory_watch_start(role)
    return _watch


def memory_watch_stop() -> None:
    """Stop this process's watch started by :func:`memory_watch_start_once`, if any."""
    global _watch
    watch, _watch = _watch, None
    if watch is not None and watch.pid == os.getpid():
        watch.stop()
