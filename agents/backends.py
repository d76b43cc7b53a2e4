"""The one place that chooses embedded or distributed.

Six parts of Breakwater have two implementations: in-process for the zero-setup embedded mode
(no ``REDIS_URL``), Redis (and Celery) for the distributed mode. They are all chosen and built
here, and the engine receives them; no other module reads ``settings.EMBEDDED``.

=================  =============================  ===================================
part               embedded                       distributed
=================  =============================  ===================================
hot state          one ``MemoryState`` a process  ``RedisState`` on the loop's wire
response cache     one bounded LRU a process      ``RedisCache`` (read in admission)
sessions           ``LocalSessions``              ``RedisSessions``
idempotency        one ``MemoryIdempotency``      ``RedisIdempotency``
journal + drainer  files under ``var/journal``    a Redis stream
cancel flags       one ``MemoryCancelFlags``      ``RedisCancelFlags``
queued work        the in-process worker          Celery ``apply_async``
=================  =============================  ===================================

Redis clients belong to an event loop (``core.redis``): build a loop's backends inside it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import current_app
from django.conf import settings

from agents.executions.idempotency import MemoryIdempotency, RedisIdempotency
from agents.executions.live import MemoryCancelFlags, RedisCancelFlags
from agents.executions.processes import process_is_dead, process_owner_id
from agents.executions.recording import (
    DrainResult,
    FileJournal,
    RecordDrainer,
    RedisJournal,
    file_drain,
    journal_directory,
    redis_drain,
)
from agents.executions.recording.files import journal_oldest_at
from agents.executions.recording.streams import stream_lag_s
from agents.executions.sessions import LocalSessions, RedisSessions
from agents.runtime.cache import MemoryCache, RedisCache, ResponseCache
from agents.runtime.clock import SystemClock
from agents.runtime.memory import MemoryState
from agents.runtime.ports import SessionStore
from agents.runtime.redis_state import RedisState
from agents.runtime.state import StateStore
from core.redis import close_loop_clients, get_async_redis, get_async_wire
from core.worker import EmbeddedWorker, current_worker

log = logging.getLogger("breakwater.backends")
T = TypeVar("T")
PREFIX = "bw"
MIN_REDIS = (7, 0)


def embedded() -> bool:
    """Embedded mode: no ``REDIS_URL``, everything in this process."""
    return bool(settings.EMBEDDED)


# --- process-wide in-memory parts (embedded) ----------------------------------------------------
# What Redis is in distributed mode: one per process, shared by every loop and thread in it (the
# serving loop, the in-process worker's jobs).

_memory_state: MemoryState | None = None
_memory_cache: MemoryCache | None = None
_memory_idempotency = MemoryIdempotency()
_memory_flags = MemoryCancelFlags()


def process_memory_state() -> MemoryState:
    global _memory_state
    if _memory_state is None:
        _memory_state = MemoryState(SystemClock())
    return _memory_state


def process_memory_cache() -> MemoryCache:
    """One bounded LRU per process (the reference deployment's ``LRUCache(maxsize=10000)``)."""
    global _memory_cache
    if _memory_cache is None:
        _memory_cache = MemoryCache(maxsize=10_000)
    return _memory_cache


# --- one event loop's parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class Backends:
    """What an engine runs on. ``drains``: this process stores the journal into the database
    (embedded mode always does: nothing else would)."""

    embedded: bool
    state: StateStore
    cache: ResponseCache
    sessions: SessionStore
    journal: FileJournal | RedisJournal
    drainer: RecordDrainer
    drains: bool
    # The journal when admission can append its "started" event itself (on the state's Redis).
    admission_records: RedisJournal | None = None


def backends_build(*, owner: str = "") -> Backends:
    """Every adapter of this mode, for the running event loop. ``owner``: this process's identity
    (``agents.executions.processes``), written on every journal ``started`` event."""
    if embedded():
        directory = journal_directory()
        return Backends(
            embedded=True,
            state=process_memory_state(),
            cache=process_memory_cache(),
            sessions=LocalSessions(),
            journal=FileJournal(directory, owner=owner),
            drainer=RecordDrainer(file_drain(directory)),
            drains=True,
        )
    wire = get_async_wire()
    journal = RedisJournal(wire, owner=owner)  # on the state's Redis: admission appends to it
    return Backends(
        embedded=False,
        state=RedisState(wire, prefix=PREFIX),
        # On the state's Redis: admission reads it, a miss costs no round trip.
        cache=RedisCache(wire, prefix=PREFIX, in_admission=True),
        sessions=RedisSessions(get_async_redis(), prefix=PREFIX),
        journal=journal,
        drainer=RecordDrainer(redis_drain(get_async_redis())),
        drains=settings.BREAKWATER_SERVE_DRAINS,
        admission_records=journal,
    )


def idempotency_store() -> MemoryIdempotency | RedisIdempotency:
    if embedded():
        return _memory_idempotency
    return RedisIdempotency(get_async_redis(), owner=process_owner_id, owner_dead=process_is_dead)


def cancel_flags() -> MemoryCancelFlags | RedisCancelFlags:
    return _memory_flags if embedded() else RedisCancelFlags()


def journal_drain() -> Callable[[], Awaitable[DrainResult]]:
    """One drain of this mode's journal into the database (``drain_records``, a reclaim)."""
    if embedded():
        return file_drain(journal_directory())
    return redis_drain(get_async_redis())


# --- the shared state from jobs -------------------------------------------------------------------


async def state_for_jobs() -> StateStore:
    """The shared state as seen from a job or a request in the running loop."""
    if embedded():
        return process_memory_state()
    return RedisState(get_async_redis(), prefix=PREFIX)


def on_state_sync(make: Callable[[StateStore], Awaitable[T]], store: StateStore | None = None) -> T:
    """``await make(state)`` from sync code (a job's thread, a Celery task): on ``store`` when
    given, else on :func:`state_for_jobs` (embedded: the process's ``MemoryState``, which is
    thread-safe and fed by the serving loop beside; distributed: a Redis client opened and
    closed here, since a client cannot outlive its loop). Runs its own short event loop: call
    it from a thread without one."""

    async def run() -> T:
        if store is not None:
            return await make(store)
        state = await state_for_jobs()
        try:
            return await make(state)
        finally:
            await close_loop_clients()

    return asyncio.run(run())


# --- scrape-time reads (/metrics) ------------------------------------------------------------

# A loop's wire -> a RedisState on it (building one reads and hashes the Lua library).
_scrape_states: weakref.WeakKeyDictionary[Any, StateStore] = weakref.WeakKeyDictionary()


def state_for_metrics() -> StateStore:
    """The shared state for ``/metrics`` in the running loop: embedded, the process's
    ``MemoryState``; distributed, a ``RedisState`` on the loop's pipelined wire, so that the
    breaker and budget reads issued together leave in one write (one round trip)."""
    if embedded():
        return process_memory_state()
    wire = get_async_wire()
    state = _scrape_states.get(wire)
    if state is None:
        state = _scrape_states[wire] = RedisState(wire, prefix=PREFIX)
    return state


async def journal_lag_s(now: float) -> float:
    """Age of the oldest execution record accepted into this mode's journal and not yet in the
    database (0 when there is none): the files' oldest undrained event against ``now`` (epoch
    seconds), or the Redis stream's oldest entry by Redis's clock."""
    if embedded():
        oldest = await asyncio.to_thread(journal_oldest_at, journal_directory())
        return 0.0 if oldest is None else max(0.0, now - oldest)
    return await stream_lag_s(get_async_wire())


# --- queued work -----------------------------------------------------------------------------------


def work_dispatch(
    name: str,
    kwargs: dict[str, Any],
    *,
    countdown: float = 0.0,
    queue: str | None = None,
    soft_time_limit: float | None = None,
    time_limit: float | None = None,
) -> None:
    """Run the Celery task ``name`` with ``kwargs``: on a Celery worker (``queue``, time limits),
    or on this process's in-process worker. The caller has recorded the work in the database
    first, so work lost with a stopping worker is picked up again by the recovery jobs."""
    if not embedded():
        current_app.send_task(
            name,
            kwargs=kwargs,
            queue=queue,
            countdown=countdown or None,
            soft_time_limit=soft_time_limit,
            time_limit=time_limit,
        )
        return
    # A process without `serve` (a command, a test) gets a worker of its own.
    worker = current_worker() or EmbeddedWorker()
    if countdown > 0:
        timer = threading.Timer(countdown, _submit, (worker, name, kwargs))
        timer.daemon = True
        timer.start()
    else:
        _submit(worker, name, kwargs)


def _submit(worker: EmbeddedWorker, name: str, kwargs: dict[str, Any]) -> None:
    try:
        worker.submit(name, **kwargs)
    except RuntimeError:  # shutting down: the work stays recorded for a later dispatch
        log.warning("in-process worker stopped; %s(%s) stays recorded", name, kwargs)


def serving_loop() -> asyncio.AbstractEventLoop | None:
    """Embedded mode: the serving loop (the in-process worker's), where a job must run what needs
    the process's engine; ``None`` when there is none (distributed mode: a worker runs its own)."""
    if not embedded():
        return None
    worker = current_worker()
    loop = worker.loop if worker is not None else None
    return loop if loop is not None and loop.is_running() and not loop.is_closed() else None


# --- start-up checks ----------------------------------------------------------------------------


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0)``; anything unreadable counts as too old."""
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return (0,)


async def require_redis_7() -> None:
    """The state scripts use Redis 7.0 features (``PEXPIRE ... GT``, function libraries): say
    so at start-up rather than failing every execution later."""
    version = str((await get_async_redis().info("server")).get("redis_version", "0"))
    if redis_version(version) < MIN_REDIS:
        raise RuntimeError(
            f"REDIS_URL: Breakwater needs Redis {MIN_REDIS[0]}.{MIN_REDIS[1]} or later, "
            f"found {version}"
        )


async def warn_redis_durability() -> list[str]:
    """What in this Redis's configuration can lose Breakwater's data: evicting keys (a budget
    window: rebuilt, but a journal entry: lost) and no persistence (a restart loses the journal
    entries not yet drained). Logged at start-up; returns the warnings."""
    client = get_async_redis()
    memory = await client.info("memory")
    persistence = await client.info("persistence")
    warnings = []
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction" and int(memory.get("maxmemory", 0) or 0) > 0:
        warnings.append(
            f"REDIS_URL: maxmemory-policy is {policy}: Redis may evict Breakwater's keys "
            "(budget windows are rebuilt from the ledger, journal entries not yet drained are "
            "lost); use noeviction"
        )
    if not int(persistence.get("aof_enabled", 0) or 0):
        warnings.append(
            "REDIS_URL: AOF persistence is off: a Redis restart loses the execution journal "
            "entries not yet drained into the database (appendonly yes, appendfsync everysec)"
        )
    for warning in warnings:
        log.warning(warning)
    return warnings


_started_checked = False


async def backends_check_start() -> None:
    """Once per process, before the first execution: the distributed mode's Redis is new enough
    (else raise), and what in its configuration can lose data is logged."""
    global _started_checked
    if embedded():
        return
    await require_redis_7()
    if not _started_checked:  # once per process (a Celery task starts an engine)
        _started_checked = True
        await warn_redis_durability()
