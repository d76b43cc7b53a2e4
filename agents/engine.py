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
from dataclasses import replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.db.models import Q

from agents.backends import (
    Backends,
    backends_build,
    backends_check_start,
    journal_drain,
)
from agents.config.live import LiveConfig
from agents.events import CompositeEvents
from agents.executions.processes import current_process
from agents.executions.recording.drainer import RecordDrainer
from agents.executions.recording.streams import RedisJournal
from agents.executions.settle import executions_settle_dead
from agents.metrics import MetricsEvents
from agents.models import ApiKey
from agents.runtime.clock import SystemClock
from agents.runtime.executor import DEFAULT_DEPLOYMENT_BREAKER, Executor
from agents.runtime.providers.base import OnToken
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.state import BreakerConfig
from agents.runtime.tools import ToolRunner
from agents.runtime.types import ExecutionRequest, ExecutionResult
from budgets.windows import LedgerBudgetWindows, budget_windows_rebuild
from incidents.events import IncidentEvents

log = logging.getLogger("breakwater.engine")
LAST_USED_FLUSH_S = 30.0
JOURNAL_MAINTAIN_S = 1.0


def deployment_breaker_config() -> BreakerConfig:
    """Every deployment breaker's configuration: ``BREAKWATER_DEPLOYMENT_BREAKER_*`` over the
    executor's defaults (the same in every process of a deployment: it is the shared state's
    reading of open and half-open)."""
    return replace(
        DEFAULT_DEPLOYMENT_BREAKER,
        failure_threshold=settings.BREAKWATER_DEPLOYMENT_BREAKER_FAILURES,
        recovery_timeout_s=settings.BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S,
    )


class Engine:
    """``backends``: what this engine runs on (default: this mode's, for the running loop)."""

    def __init__(self, backends: Backends | None = None) -> None:
        self.clock = SystemClock()
        self.config = LiveConfig()
        # This process's identity: its executions carry it, so they are settled if it dies.
        self.process = current_process()
        self.backends = backends or backends_build(owner=self.process.identity.id)
        self.state = self.backends.state
        self.sessions = self.backends.sessions
        self.cache = self.backends.cache
        self.records = self.backends.journal
        self.drainer: RecordDrainer | None = self.backends.drainer if self.backends.drains else None
        self.providers = ProviderRouter(
            clock=self.clock, allow_hosts=settings.BREAKWATER_PROVIDER_ALLOW_HOSTS
        )
        self.tools = ToolRunner(
            python_allow_list=frozenset(settings.BREAKWATER_TOOL_ALLOW_LIST),
            webhook_allow_hosts=frozenset(settings.BREAKWATER_WEBHOOK_ALLOW_HOSTS),
            http=self.providers.http,
            clock=self.clock,
        )
        self.incidents = IncidentEvents()
        self.events = CompositeEvents(MetricsEvents(), self.incidents)
        self.deployment_breaker = deployment_breaker_config()
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
            admission_records=self.backends.admission_records,
            deployment_breaker=self.deployment_breaker,
        )
        self._tasks: list[asyncio.Task[Any]] = []
        self.started = False
        # API key id -> last use, flushed every LAST_USED_FLUSH_S (no write per request).
        self._last_used: dict[int, datetime] = {}

    async def start(self) -> None:
        if self.started:
            return
        await asyncio.to_thread(self.config.reload_in_thread)
        await backends_check_start()
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
        if self.backends.embedded:
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
            elif not self.backends.embedded:
                await journal_drain()()
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


def engines_reload_config() -> None:
    """Reload the config of every engine in this process now (sync: call it from a thread, as
    a console view runs), so that a change made here, a revoked key above all, is in force in
    this process at once instead of at the next poll; the other processes poll within about a
    second. No engine yet (a test client), nothing to do."""
    for engine in list(_engines.values()):
        engine.config.reload()
