"""The live dashboard's ticker: one snapshot per process per second, shared by every socket.

``WS /ws/dashboard/`` (:mod:`console.consumers`) subscribes to the :class:`DashboardTicker` of
the running event loop. The ticker starts with its first subscriber and stops when the last one
leaves. Each tick it computes one :class:`Snapshot` of the whole deployment:

* from the database (:func:`console.selectors.dashboard_figures`, at most six grouped queries,
  plus the catalog of agents, deployments and budgets when the config version moved). The
  queries run on the ticker's own thread, which keeps one connection while the ticker runs:
  no database work on the event loop, no connection set-up per tick;
* from the shared state (Redis, or process memory in embedded mode): each agent's and each
  deployment's breaker, deployments' in-flight calls, budget counters.

Every socket then gets that snapshot, rendered for what its viewer may see (a key's agent
allow-list); a rendering is computed once per tick per allow-list, so a hundred open consoles
cost one computation and one JSON encoding, not a hundred. A subscriber holds only the latest
snapshot: a slow client skips ticks instead of queueing them or slowing the others.

When the database or the shared state fails, the snapshot still goes out on time with the
parts it could not read set to null and the failure named in ``problems``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

from django.db import connections
from django.utils import timezone

from agents.runtime.executor import DEFAULT_DEPLOYMENT_BREAKER
from agents.runtime.state import (
    BreakerConfig,
    BreakerSnapshot,
    StateStore,
    agent_breaker_key,
    deployment_breaker_key,
)
from budgets.selectors import BudgetStatus, budget_spans, latency_percentile
from console.selectors import (
    WINDOW,
    AgentFigures,
    DashboardCatalog,
    DashboardFigures,
    Tally,
    dashboard_catalog,
    dashboard_figures,
)

log = logging.getLogger("breakwater.dashboard")

INTERVAL_S = 1.0
CATALOG_MAX_AGE_S = 60.0  # re-read even if the config version did not move (a safety net)
STATE_CONCURRENCY = 4  # breaker reads in flight at once (leave the pool to executions)
STOP_TIMEOUT_S = 5.0

T = TypeVar("T")
Visible = frozenset[str] | None  # None: every agent


# --- the snapshot --------------------------------------------------------------------------


@dataclass
class Live:
    """What the shared state said this tick."""

    agent_breakers: dict[str, BreakerSnapshot] = field(default_factory=dict)
    deployment_breakers: dict[int, BreakerSnapshot] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)
    budget_usage: dict[str, tuple[int, int]] = field(default_factory=dict)


def _money(value: Any) -> float | None:
    return None if value is None else float(value)


def _breaker_out(snapshot: BreakerSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "state": snapshot.state.value,
        "open_until": snapshot.open_until,
        "consecutive_failures": snapshot.consecutive_failures,
    }


def _budget_out(status: BudgetStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {
        "id": status.id,
        "window": status.window,
        "limit_usd": _money(status.limit_usd),
        "spent_usd": _money(status.spent_usd),
        "reserved_usd": _money(status.reserved_usd),
        "remaining_usd": _money(status.remaining_usd),
        "forecast_usd": _money(status.forecast_usd),
        "state": status.state,
        "window_ends_at": status.window_ends_at.timestamp(),
    }


def _tally_out(tally: Tally, *, latency: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "requests": tally.requests,
        "succeeded": tally.succeeded,
        "degraded": tally.degraded,
        "failed": tally.failed,
        "cancelled": tally.cancelled,
        "errors": tally.errors,
        "cached": tally.cached,
        "cost_usd": float(tally.cost_usd),
    }
    if latency:
        out["p50_latency_ms"] = latency_percentile(tally.buckets, 0.5)
        out["p95_latency_ms"] = latency_percentile(tally.buckets, 0.95)
    return out


@dataclass
class Snapshot:
    """One tick's view of the whole deployment; :meth:`render` narrows it to a viewer."""

    seq: int
    at: float
    catalog: DashboardCatalog
    figures: DashboardFigures | None  # None: the database did not answer
    live: Live | None  # None: the shared state did not answer
    problems: list[str]
    _rendered: dict[Visible, str] = field(default_factory=dict, repr=False)

    def render(self, visible: Visible) -> str:
        """The JSON message for a viewer who may see ``visible`` agents (None: all)."""
        text = self._rendered.get(visible)
        if text is None:
            text = self._rendered[visible] = json.dumps(
                self.message(visible), separators=(",", ":")
            )
        return text

    def message(self, visible: Visible) -> dict[str, Any]:
        def shown(name: str) -> bool:
            return visible is None or name in visible

        figures, live = self.figures, self.live
        budgets = figures.budgets if figures is not None else None
        daily = {
            (status.scope, status.target): status
            for status in budgets or ()
            if status.window == "daily"
        }
        by_model: dict[str, list[int]] = {}
        for row in self.catalog.deployments:
            by_model.setdefault(row["model"], []).append(row["id"])
        known = {agent.name for agent in self.catalog.agents}
        names = [agent.name for agent in self.catalog.agents] + sorted(
            name for name in (figures.agents if figures is not None else {}) if name not in known
        )
        catalog = {agent.name: agent for agent in self.catalog.agents}
        empty = AgentFigures()
        agents, last_minute, today = [], Tally(), Tally()
        running = queued = 0
        for name in names:
            if not shown(name):
                continue
            agent = catalog.get(name)
            mine = figures.agents.get(name, empty) if figures is not None else None
            if mine is not None:
                last_minute.merge(mine.last_minute)
                today.merge(mine.today)
                running += mine.running
                queued += mine.queued
            agents.append(
                {
                    "name": name,
                    "enabled": agent.enabled if agent is not None else False,
                    "last_minute": None
                    if mine is None
                    else _tally_out(mine.last_minute, latency=True),
                    "today": None if mine is None else _tally_out(mine.today, latency=False),
                    "running": None if mine is None else mine.running,
                    "queued": None if mine is None else mine.queued,
                    "breaker": _breaker_out(live.agent_breakers.get(name))
                    if live is not None
                    else None,
                    "deployments": [
                        ident
                        for model in (agent.models if agent is not None else ())
                        for ident in by_model.get(model, ())
                    ],
                    "budget": _budget_out(daily.get(("agent", name))),
                }
            )
        deployments = [
            {
                "id": row["id"],
                "model": row["model"],
                "provider": row["provider"],
                "enabled": row["enabled"],
                "breaker": _breaker_out(live.deployment_breakers.get(row["id"]))
                if live is not None
                else None,
                "in_flight": live.in_flight.get(row["id"], 0) if live is not None else None,
            }
            for row in self.catalog.deployments
        ]
        return {
            "type": "snapshot",
            "seq": self.seq,
            "at": self.at,
            "day": figures.day if figures is not None else None,
            "window_s": int(WINDOW.total_seconds()),
            "agents": agents,
            "totals": {
                "last_minute": None if figures is None else _tally_out(last_minute, latency=True),
                "today": None if figures is None else _tally_out(today, latency=False),
                "running": None if figures is None else running,
                "queued": None if figures is None else queued,
                "in_flight": None if live is None else sum(d["in_flight"] for d in deployments),
            },
            "deployments": deployments,
            "incidents": self._incidents(visible),
            # A key limited to some agents does not see the global budget (everyone's spend),
            # as on GET /api/v1/budgets.
            "budget": _budget_out(daily.get(("global", "*"))) if visible is None else None,
            "problems": list(self.problems),
        }

    def _incidents(self, visible: Visible) -> dict[str, Any] | None:
        if self.figures is None:
            return None
        counts = {"open": 0, "acknowledged": 0}
        latest: dict[str, Any] | None = None
        for group in self.figures.incidents:
            # Deployment-wide incidents (no agent) concern every agent: unrestricted only.
            if visible is not None and group.agent not in visible:
                continue
            counts[group.status] = counts.get(group.status, 0) + group.count
            if latest is None or (group.newest["opened_at"], group.newest["id"]) > (
                latest["opened_at"],
                latest["id"],
            ):
                latest = group.newest
        return {**counts, "latest": latest}


# --- subscriptions -------------------------------------------------------------------------


class Subscription:
    """A mailbox holding the latest snapshot not yet taken (older ones are dropped)."""

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._latest: Snapshot | None = None

    def offer(self, snapshot: Snapshot) -> None:
        self._latest = snapshot
        self._ready.set()

    async def next(self) -> Snapshot:
        while True:
            await self._ready.wait()
            self._ready.clear()
            snapshot, self._latest = self._latest, None
            if snapshot is not None:
                return snapshot


# --- the ticker ----------------------------------------------------------------------------


def _in_thread(fn: Callable[..., T], **kwargs: Any) -> T:
    """Run on the ticker's thread. Its connection stays open between ticks; after a failure it
    is closed, so the next tick reconnects (a restarted database)."""
    try:
        return fn(**kwargs)
    except Exception:
        connections.close_all()
        raise


class DashboardTicker:
    """Computes a :class:`Snapshot` every ``interval_s`` while anyone is subscribed."""

    def __init__(self, *, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._catalog: DashboardCatalog | None = None
        self._catalog_version = -1
        self._catalog_read = 0.0
        self.latest: Snapshot | None = None
        self.computed = 0  # snapshots computed since this ticker was made (tests, measurements)
        self.starts = 0  # times the ticker task was started
        self._down: set[str] = set()  # parts that failed last tick (logged once per outage)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def subscribe(self) -> Subscription:
        """A new subscriber; it gets the latest snapshot at once if it is fresh."""
        subscription = Subscription()
        self._subscribers.add(subscription)
        if not self.running:
            self.latest = None  # from before the ticker stopped: stale
            self.starts += 1
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="bw-dashboard-ticker"
            )
        elif self.latest is not None and time.time() - self.latest.at < self.interval_s:
            subscription.offer(self.latest)
        return subscription

    async def unsubscribe(self, subscription: Subscription) -> None:
        """Forget ``subscription``; the last one out stops the ticker (and waits for it)."""
        self._subscribers.discard(subscription)
        if not self._subscribers:
            await self.stop()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bw-dashboard")
        try:
            while True:
                started = loop.time()
                try:
                    snapshot = await self._tick(executor)
                except Exception:  # a bug, not an outage (_tick reports those): keep ticking
                    log.exception("dashboard: computing a snapshot failed")
                else:
                    self.latest = snapshot
                    for subscription in list(self._subscribers):
                        subscription.offer(snapshot)
                await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))
        finally:
            # The thread's connection goes with the ticker (after any query still running).
            with contextlib.suppress(Exception):
                await asyncio.shield(loop.run_in_executor(executor, connections.close_all))
            executor.shutdown(wait=False)

    async def _tick(self, executor: ThreadPoolExecutor) -> Snapshot:
        from agents.engine import get_engine

        loop = asyncio.get_running_loop()

        async def db(fn: Callable[..., T], **kwargs: Any) -> T:
            return await loop.run_in_executor(executor, functools.partial(_in_thread, fn, **kwargs))

        engine = get_engine()
        if not engine.started:
            await engine.start()
        problems: list[str] = []
        database_down = False
        version = engine.config.snapshot.version
        if (
            self._catalog is None
            or version != self._catalog_version
            or loop.time() - self._catalog_read > CATALOG_MAX_AGE_S
        ):
            try:
                self._catalog = await db(dashboard_catalog)
                self._catalog_version, self._catalog_read = version, loop.time()
            except Exception as exc:
                problems.append(self._failed("database", exc))
                database_down = True
        catalog = self._catalog or DashboardCatalog(agents=(), deployments=(), budgets=())
        now = timezone.now()
        spans = budget_spans(catalog.budgets, now=now)
        live: Live | None
        try:
            live = await self._live(engine.state, catalog, tuple(span.key for span in spans))
        except Exception as exc:
            problems.append(self._failed("shared state", exc))
            live = None
        figures: DashboardFigures | None = None
        if not database_down:  # no answer this tick already: do not wait on it twice
            try:
                figures = await db(
                    dashboard_figures,
                    now=now,
                    spans=spans,
                    usage=None if live is None else live.budget_usage,
                )
            except Exception as exc:
                problems.append(self._failed("database", exc))
                database_down = True
        failing = {problem.partition(" unavailable")[0] for problem in problems}
        for part in self._down - failing:
            log.info("dashboard: the %s answers again", part)
        self._down = failing
        self.computed += 1
        return Snapshot(
            seq=self.computed,
            at=now.astimezone(UTC).timestamp(),
            catalog=catalog,
            figures=figures,
            live=live,
            problems=problems,
        )

    def _failed(self, part: str, exc: BaseException) -> str:
        """The problem to report; logged when ``part`` starts failing, not every tick."""
        if part not in self._down:
            log.warning("dashboard: reading the %s failed", part, exc_info=exc)
        return f"{part} unavailable: {type(exc).__name__}: {exc}"[:300]

    async def _live(
        self, state: StateStore, catalog: DashboardCatalog, budget_keys: tuple[str, ...]
    ) -> Live:
        return await live_read(state, catalog, budget_keys)


async def live_read(
    state: StateStore, catalog: DashboardCatalog, budget_keys: tuple[str, ...]
) -> Live:
    """Every agent's and deployment's breaker, the deployments' in-flight calls and the budget
    counters of ``budget_keys``, from the shared state (the ticker's, and the overview page's
    server-side render)."""
    gate = asyncio.Semaphore(STATE_CONCURRENCY)

    async def breaker(key: str, config: BreakerConfig) -> BreakerSnapshot:
        async with gate:
            return await state.breaker_snapshot(key, config)

    ids = tuple(row["id"] for row in catalog.deployments)
    agents = [agent.config for agent in catalog.agents]

    async def in_flight() -> dict[int, int]:
        return await state.in_flight(ids) if ids else {}

    async def usage() -> dict[str, tuple[int, int]]:
        return await state.budget_usage(budget_keys) if budget_keys else {}

    counts = asyncio.gather(in_flight(), usage())
    breakers = asyncio.gather(
        *(breaker(agent_breaker_key(a.name), a.breaker) for a in agents),
        *(breaker(deployment_breaker_key(i), DEFAULT_DEPLOYMENT_BREAKER) for i in ids),
    )
    (loads, spent), snapshots = await asyncio.gather(counts, breakers)
    return Live(
        agent_breakers={a.name: s for a, s in zip(agents, snapshots, strict=False)},
        deployment_breakers=dict(zip(ids, snapshots[len(agents) :], strict=True)),
        in_flight=loads,
        budget_usage=spent,
    )


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, DashboardTicker] = (
    weakref.WeakKeyDictionary()
)


def dashboard_ticker() -> DashboardTicker:
    """The ticker of the running event loop (one per serving process)."""
    loop = asyncio.get_running_loop()
    ticker = _tickers.get(loop)
    if ticker is None:
        ticker = _tickers[loop] = DashboardTicker()
    return ticker
