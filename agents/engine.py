"""The process's runtime, assembled from Django-side adapters.

One :class:`Engine` per serving process and event loop: live config (memory, polled), shared
state (in-process or Redis), providers (one pooled HTTP client), the durable recorder, metrics
and live events. ``manage.py serve`` starts and stops it; request handlers call
:func:`get_engine` and :meth:`Engine.execute`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q

from agents.live_config import LiveConfig
from agents.models import ApiKey
from agents.recording.drainer import RecordDrainer
from agents.recording.streams import RedisJournal
from agents.runtime.cache import MemoryCache, RedisCache, ResponseCache
from agents.runtime.clock import SystemClock
from agents.runtime.executor import Executor
from agents.runtime.memory import MemoryState
from agents.runtime.ports import SessionStore
from agents.runtime.providers.base import OnToken
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.state import StateStore
from agents.runtime.tools import ToolRunner
from agents.runtime.types import ExecutionRequest, ExecutionResult
from agents.sessions import LocalSessions, RedisSessions

log = logging.getLogger("breakwater.engine")
LAST_USED_FLUSH_S = 30.0
JOURNAL_MAINTAIN_S = 1.0
T = TypeVar("T")


MIN_REDIS = (7, 0)


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` -> ``(7, 0)``; anything unreadable counts as too old."""
    try:
        return tuple(int(part) for part in text.split(".")[:2])
    except ValueError:
        return (0,)


async def require_redis_7() -> None:
    """The state scripts use Redis 7.0 features (``PEXPIRE ... GT``, function libraries): say
    so at start-up rather than failing every execution later."""
    from console.redis import get_async_redis

    version = str((await get_async_redis().info("server")).get("redis_version", "0"))
    if redis_version(version) < MIN_REDIS:
        raise RuntimeError(
            f"REDIS_URL: Breakwater needs Redis {MIN_REDIS[0]}.{MIN_REDIS[1]} or later, "
            f"found {version}"
        )


_durability_checked = False


async def warn_redis_durability() -> list[str]:
    """What in this Redis's configuration can lose Breakwater's data: evicting keys (a budget
    window: rebuilt, but a journal entry: lost) and no persistence (a restart loses the journal
    entries not yet drained). Logged at start-up; returns the warnings."""
    from console.redis import get_async_redis

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


class Engine:
    def __init__(self) -> None:
        from agents.events import CompositeEvents
        from agents.metrics import MetricsEvents
        from agents.processes import current_process
        from agents.recording import recorder_for_settings
        from budgets.windows import LedgerBudgetWindows
        from incidents.events import IncidentEvents

        self.clock = SystemClock()
        self.config = LiveConfig()
        # This process's identity: its executions carry it, so they are settled if it dies.
        self.process = current_process()
        self.state: StateStore
        if settings.EMBEDDED:
            self.state = process_memory_state()
        else:
            from agents.runtime.redis_state import RedisState
            from console.redis import get_async_wire

            self.state = RedisState(get_async_wire(), prefix="bw")
        self.providers = ProviderRouter(
            clock=self.clock, allow_hosts=settings.BREAKWATER_PROVIDER_ALLOW_HOSTS
        )
        self.sessions: SessionStore
        if settings.EMBEDDED:
            self.sessions = LocalSessions()
        else:
            from console.redis import get_async_redis

            self.sessions = RedisSessions(get_async_redis(), prefix="bw")
        self.tools = ToolRunner(
            python_allow_list=frozenset(settings.BREAKWATER_TOOL_ALLOW_LIST),
            webhook_allow_hosts=frozenset(settings.BREAKWATER_WEBHOOK_ALLOW_HOSTS),
            http=self.providers.http,
            clock=self.clock,
        )
        self.records, drainer = recorder_for_settings(owner=self.process.identity.id)
        # Embedded mode always drains here: nothing else would.
        serve_drains = settings.EMBEDDED or settings.BREAKWATER_SERVE_DRAINS
        self.drainer: RecordDrainer | None = drainer if serve_drains else None
        self.incidents = IncidentEvents()
        self.events = CompositeEvents(MetricsEvents(), self.incidents)
        self.cache: ResponseCache
        if settings.EMBEDDED:
            self.cache = process_memory_cache()
        else:
            from console.redis import get_async_wire

            # On the state's Redis: admission reads it, a miss costs no round trip.
            self.cache = RedisCache(get_async_wire(), prefix="bw", in_admission=True)
        self.executor = Executor(
            config=self.config,
            state=self.state,
            providers=self.providers,
            clock=self.clock,
            records=self.records,
            events=self.events,
            tools=self.tools,
            sessions=self.sessions,
            cache=self.cache,
            windows=LedgerBudgetWindows(self.state, before=self._records_synced),
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = False
        # API key id -> last use, flushed every LAST_USED_FLUSH_S (no write per request).
        self._last_used: dict[int, datetime] = {}

    async def start(self) -> None:
        if self.started:
            return
        await asyncio.to_thread(self.config.reload_in_thread)
        if not settings.EMBEDDED:
            await require_redis_7()
            global _durability_checked
            if not _durability_checked:  # once per process (a Celery task starts an engine)
                _durability_checked = True
                await warn_redis_durability()
        await self._recover()
        # Any change (an operator's breaker command bumps the version too) drops what this
        # process believes about open breakers: the shared state is asked again.
        watch = self.config.watch(on_change=self.executor.forget_open_breakers)
        self._tasks.append(asyncio.create_task(watch, name="bw-config-watch"))
        self._tasks.append(asyncio.create_task(self._flush_last_used_loop(), name="bw-last-used"))
        if isinstance(self.records, RedisJournal):
            self._tasks.append(asyncio.create_task(self._journal_loop(), name="bw-journal"))
        if self.drainer is not None:
            self.drainer.start()
        self.started = True

    async def _recover(self) -> None:
        """Before the first admission: store what the journal holds (a previous process's last
        events), settle the executions dead processes left running (an embedded ``serve``
        restarted: at once), then rebuild the budget windows the state store does not know
        (embedded: all of them, memory is new) from the ledger. Each step is retried where it
        fails later: by the drainer, the settle job, and admission itself."""
        from budgets.windows import budget_windows_rebuild

        if isinstance(self.records, RedisJournal):
            try:
                await self.records.maintain()  # learn the stream's epoch before any event
            except Exception:
                log.exception("could not read the journal's epoch at start-up")
        if self.drainer is not None:
            try:
                for _ in range(20):  # the rest drains in the background
                    if not (await self.drainer.drain_now()).full:
                        break
            except Exception:
                log.exception("could not drain the journal at start-up")
        if settings.EMBEDDED:
            from agents.executions import executions_settle_dead

            try:
                await asyncio.to_thread(executions_settle_dead, store=self.state)
            except Exception:
                log.exception("could not settle the executions of dead processes")
        try:
            await budget_windows_rebuild(store=self.state)
        except Exception:
            log.exception("could not rebuild the budget windows at start-up")

    async def _records_synced(self) -> None:
        """Before a budget window is rebuilt from the database: the journal's events are
        there. A Redis that lost its data gets this process's recent events again, then one
        drain stores what the journal holds (this process's drainer, or a drain of its own where
        `drain_records` runs elsewhere)."""
        if isinstance(self.records, RedisJournal):
            await self.records.maintain()
        try:
            if self.drainer is not None:
                await self.drainer.drain_now()
            elif not settings.EMBEDDED:
                from agents.recording import redis_drain
                from console.redis import get_async_redis

                await redis_drain(get_async_redis())()
        except Exception:  # another drainer may store them: wait for that below
            log.warning("could not drain the journal before a budget rebuild", exc_info=True)
        if isinstance(self.records, RedisJournal) and not await self.records.wait_replay_stored():
            log.warning("the journal's replayed events were not all stored before the rebuild")

    async def _journal_loop(self) -> None:
        """Every second: what the Redis journal did not take, or lost, is written again."""
        assert isinstance(self.records, RedisJournal)
        while True:
            try:
                await self.records.maintain()
            except Exception:  # Redis still unreachable: the next turn tries again
                log.debug("journal maintenance failed", exc_info=True)
            await asyncio.sleep(JOURNAL_MAINTAIN_S)

    def key_used(self, key_id: int, at: datetime) -> None:
        self._last_used[key_id] = at

    def flush_last_used(self) -> int:
        """Write buffered last-used times (sync; a thread). Never moves a time backwards."""
        pending, self._last_used = self._last_used, {}
        for key_id, at in pending.items():
            ApiKey.objects.filter(pk=key_id).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=at)
            ).update(last_used_at=at)
        return len(pending)

    async def _flush_last_used_loop(self) -> None:
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_S)
            try:
                await asyncio.to_thread(self._flush_in_thread)
            except Exception:
                log.exception("flushing API key last-used times failed")

    def _flush_in_thread(self) -> None:
        close_old_connections()
        try:
            self.flush_last_used()
        finally:
            close_old_connections()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._last_used:
            await asyncio.to_thread(self._flush_in_thread)
        await self.executor.drain_cache_writes()
        if self.drainer is not None:
            await self.drainer.stop()
        self.records.close()
        self.incidents.close()
        await self.tools.close()
        await self.providers.close()
        self.started = False

    async def execute(
        self, request: ExecutionRequest, *, on_token: OnToken | None = None
    ) -> ExecutionResult:
        if not self.started:
            await self.start()
        return await self.executor.execute(request, on_token=on_token)


_engines: dict[int, Engine] = {}
_memory_state: MemoryState | None = None


def process_memory_state() -> MemoryState:
    """Embedded mode's hot state: one per process, shared by every loop and thread in it (the
    serve loop, the in-process worker's jobs), since it is what Redis is in distributed mode."""
    global _memory_state
    if _memory_state is None:
        _memory_state = MemoryState(SystemClock())
    return _memory_state


_memory_cache: MemoryCache | None = None


def process_memory_cache() -> MemoryCache:
    """Embedded mode's response cache: one bounded LRU per process (the reference's
    ``LRUCache(maxsize=10000)``)."""
    global _memory_cache
    if _memory_cache is None:
        _memory_cache = MemoryCache(maxsize=10_000)
    return _memory_cache


async def state_for_jobs() -> StateStore:
    """The shared state as seen from a job or a request in the running loop."""
    if settings.EMBEDDED:
        return process_memory_state()
    from agents.runtime.redis_state import RedisState
    from console.redis import get_async_redis

    return RedisState(get_async_redis(), prefix="bw")


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
            if not settings.EMBEDDED:
                from console.redis import get_async_redis

                await get_async_redis().aclose()

    return asyncio.run(run())


def get_engine() -> Engine:
    """The engine of the running event loop (created on first use)."""
    loop_id = id(asyncio.get_running_loop())
    engine = _engines.get(loop_id)
    if engine is None:
        engine = _engines[loop_id] = Engine()
    return engine


async def engine_shutdown() -> None:
    engine = _engines.pop(id(asyncio.get_running_loop()), None)
    if engine is not None:
        await engine.stop()
