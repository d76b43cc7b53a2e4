"""``GET /metrics``: Prometheus exposition, merged across worker processes in multiprocess mode.

One scrape is two parts (docs/DECISIONS.md #16):

1. **What the processes counted**: this process's registry, or in multiprocess mode
   (``PROMETHEUS_MULTIPROC_DIR``) the merged files of every process on the host: the agents'
   counters and histograms (agents/metrics.py) and django-prometheus' ``django_http_*``,
   ``django_db_*`` and ``django_cache_*``. The per-agent families are made whole for the agents
   that exist now (zero samples for what an agent has not counted yet; nothing of a deleted
   agent).
2. **What mirrors shared state**, read now, so that it is right whichever process answers and
   exists from start-up for every object: breaker states and budget windows (one pipelined
   read of the shared state), budgets' limits and forecasts and agents' SLO objectives (the
   database), the journal's drain lag, live processes by role (heartbeat rows) and the
   migrations applied.

Reads: three catalog queries, one for the processes, one for the budgets' recent spend (and
one more if a budget window is unknown to the shared state), one pipelined shared-state round
trip; the migration counts at most once a minute. A source that fails is reported by
``breakwater_metrics_source_up{source}`` and its series are left out; the scrape still answers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from agents.backends import embedded, journal_lag_s, state_for_metrics
from agents.engine import deployment_breaker_config
from agents.executions.processes import processes_live_by_role
from agents.metrics import (
    breaker_families,
    cleanup_dead_processes,
    complete_agent_families,
    drain_lag_family,
    multiprocess_dir,
    processes_family,
    source_up_family,
)
from agents.runtime.state import (
    BreakerState,
    BudgetWindow,
    StateStore,
    agent_breaker_key,
    deployment_breaker_key,
)
from budgets.metrics import budget_families, slo_objective_families
from budgets.selectors import BudgetSpan, BudgetStatus, budget_spans, budget_statuses
from console.selectors import DashboardCatalog, dashboard_catalog
from core.models import ConfigVersion

log = logging.getLogger("breakwater.metrics")

MIGRATIONS_MAX_AGE_S = 60.0
CATALOG_MAX_AGE_S = 60.0  # re-read even if the config version did not move (a safety net)
RATES_MAX_AGE_S = 15.0  # the forecasts' recent spend rate (the budgets-observe job's period)


@dataclass
class ScrapeExtra:
    """What a scrape adds to the processes' own series."""

    families: list[Metric] = field(default_factory=list)
    agents: frozenset[str] | None = None  # the agents that exist (None: unknown this scrape)


# --- database ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DatabaseRead:
    catalog: DashboardCatalog
    roles: dict[str, int]
    migrations: dict[str, tuple[int, int]] | None


_migrations_lock = threading.Lock()
_migrations: tuple[float, dict[str, tuple[int, int]]] | None = None


def _migration_counts() -> dict[str, tuple[int, int]]:
    """Database alias -> (applied, unapplied) migrations, re-read at most once a minute (it
    loads the migration graph: tens of milliseconds)."""
    global _migrations
    with _migrations_lock:
        if _migrations is not None and time.monotonic() - _migrations[0] < MIGRATIONS_MAX_AGE_S:
            return _migrations[1]
        from django.db.migrations.executor import MigrationExecutor

        counts = {}
        for alias in connections.databases:
            executor = MigrationExecutor(connections[alias])
            plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
            counts[alias] = (len(executor.loader.applied_migrations), len(plan))
        _migrations = (time.monotonic(), counts)
        return counts


_catalog_lock = threading.Lock()
_catalog: tuple[Any, float, DashboardCatalog] | None = None  # (config version, read at, it)


def _catalog_read() -> DashboardCatalog:
    """Every agent, deployment and budget: one query for the config version, and the three of
    the catalog when it moved (every write to them bumps it, deletions included)."""
    global _catalog
    # With its time: a version row re-created from scratch (a restored database) counts again.
    version = ConfigVersion.objects.filter(pk=1).values_list("version", "changed_at").first()
    with _catalog_lock:
        cached = _catalog
        if (
            cached is not None
            and cached[0] == version
            and time.monotonic() - cached[1] < CATALOG_MAX_AGE_S
        ):
            return cached[2]
        catalog = dashboard_catalog()
        _catalog = (version, time.monotonic(), catalog)
        return catalog


@dataclass(frozen=True)
class _LedgerReads:
    """What a scrape reuses of the budgets' ledger reads for ``RATES_MAX_AGE_S``."""

    at: float  # monotonic
    rates: dict[int, Decimal]  # budget id -> recent spend, USD per second
    unknown_spent: dict[str, int]  # window key unknown to the shared state -> ledger micro-USD


_ledger_lock = threading.Lock()
_ledger: _LedgerReads | None = None


def _budget_statuses(
    spans: list[BudgetSpan], windows: dict[str, BudgetWindow], now: datetime
) -> list[BudgetStatus]:
    """The budgets' states with the shared state's counters fresh at every scrape, and the two
    ledger reads (the forecasts' recent spend rate; the spend of windows the shared state does
    not know, e.g. one no execution touched since Redis started) at most every
    ``RATES_MAX_AGE_S``: those are most of the cost (a sum filtered per budget, about 10 ms
    of ORM work at 30 budgets)."""
    global _ledger
    with _ledger_lock:
        cached = _ledger
    if (
        cached is not None
        and time.monotonic() - cached.at < RATES_MAX_AGE_S
        and all(span.budget.pk in cached.rates for span in spans)
        and all(w.ready or key in cached.unknown_spent for key, w in windows.items())
    ):
        usage = {
            key: window if window.ready else BudgetWindow(cached.unknown_spent[key], 0)
            for key, window in windows.items()
        }
        return budget_statuses(spans=spans, usage=usage, now=now, rates=cached.rates)
    statuses = budget_statuses(spans=spans, usage=windows, now=now)
    unknown = {
        span.key: int(status.spent_usd * 1_000_000)
        for span, status in zip(spans, statuses, strict=True)
        if span.key in windows and not windows[span.key].ready
    }
    with _ledger_lock:
        _ledger = _LedgerReads(
            at=time.monotonic(),
            rates={status.id: status.rate_usd_per_hour / 3600 for status in statuses},
            unknown_spent=unknown,
        )
    return statuses


def _database_read() -> _DatabaseRead:
    catalog = _catalog_read()
    roles = processes_live_by_role()
    # The roles every deployment of this mode runs read 0 even before their first row.
    for role in ("serve",) if embedded() else ("serve", "worker", "beat"):
        roles.setdefault(role, 0)
    try:
        migrations: dict[str, tuple[int, int]] | None = _migration_counts()
    except Exception:
        log.warning("metrics: counting migrations failed", exc_info=True)
        migrations = None
    return _DatabaseRead(catalog=catalog, roles=roles, migrations=migrations)


def _migration_families(counts: dict[str, tuple[int, int]]) -> list[Metric]:
    # django-prometheus' names and labels (its ExportMigrations sets per-process gauges at app
    # start-up; read here instead, so that every process says the same).
    applied = GaugeMetricFamily(
        "django_migrations_applied_total",
        "Count of applied migrations by database connection",
        labels=["connection"],
    )
    unapplied = GaugeMetricFamily(
        "django_migrations_unapplied_total",
        "Count of unapplied migrations by database connection",
        labels=["connection"],
    )
    for alias, (done, todo) in sorted(counts.items()):
        applied.add_metric([alias], done)
        unapplied.add_metric([alias], todo)
    return [applied, unapplied]


# --- shared state --------------------------------------------------------------------------


async def _shared_read(
    state: StateStore, catalog: DashboardCatalog, spans: list[BudgetSpan]
) -> tuple[dict[str, BreakerState], dict[int, BreakerState], dict[str, BudgetWindow]]:
    """Every breaker's effective state and every budget window, issued at once (on Redis: one
    write on the loop's pipelined wire, one round trip)."""
    agents = catalog.agents
    ids = tuple(int(row["id"]) for row in catalog.deployments)
    keys = tuple(span.key for span in spans)
    deployment = deployment_breaker_config()

    async def windows() -> dict[str, BudgetWindow]:
        return await state.budget_windows(keys) if keys else {}

    snapshots, budget_windows = await asyncio.gather(
        asyncio.gather(
            *(state.breaker_snapshot(agent_breaker_key(a.name), a.config.breaker) for a in agents),
            *(state.breaker_snapshot(deployment_breaker_key(i), deployment) for i in ids),
        ),
        windows(),
    )
    agent_states = {a.name: s.state for a, s in zip(agents, snapshots, strict=False)}
    deployment_states = {i: s.state for i, s in zip(ids, snapshots[len(agents) :], strict=True)}
    return agent_states, deployment_states, budget_windows


# --- one scrape ----------------------------------------------------------------------------


async def scrape_read() -> ScrapeExtra:
    """The series read at scrape time (module doc, part 2). Never raises: a failing source is
    logged, reported by ``breakwater_metrics_source_up`` and left out."""
    extra = ScrapeExtra()
    up: dict[str, bool] = {}
    now = timezone.now()

    async def lag() -> float | None:
        try:
            value = await journal_lag_s(now.timestamp())
        except Exception:
            log.warning("metrics: reading the journal's drain lag failed", exc_info=True)
            return None
        return value

    try:
        database: _DatabaseRead | None = await sync_to_async(_database_read)()
        up["database"] = True
    except Exception:
        log.warning("metrics: reading the catalog failed", exc_info=True)
        database, up["database"] = None, False
    if database is None:
        drain_lag = await lag()
    else:
        catalog = database.catalog
        extra.agents = frozenset(agent.name for agent in catalog.agents)
        extra.families += slo_objective_families(catalog.slos)
        spans = budget_spans(catalog.budgets, now=now)

        async def shared() -> (
            tuple[dict[str, BreakerState], dict[int, BreakerState], dict[str, BudgetWindow]] | None
        ):
            try:
                return await _shared_read(state_for_metrics(), catalog, spans)
            except Exception:
                log.warning("metrics: reading the shared state failed", exc_info=True)
                return None

        live, drain_lag = await asyncio.gather(shared(), lag())
        up["shared_state"] = live is not None
        if live is not None:
            agent_states, deployment_states, windows = live
            extra.families += breaker_families(agent_states, deployment_states)
            try:
                statuses = await sync_to_async(_budget_statuses)(spans, windows, now)
            except Exception:
                log.warning("metrics: computing the budgets failed", exc_info=True)
                up["database"] = False
            else:
                extra.families += budget_families(statuses)
        extra.families.append(processes_family(database.roles))
        if database.migrations is not None:
            extra.families += _migration_families(database.migrations)
    up["journal"] = drain_lag is not None
    if drain_lag is not None:
        extra.families.append(drain_lag_family(drain_lag))
    extra.families.append(source_up_family(up))
    return extra


class _Scrape:
    """The one collector of a scrape's registry: the processes' families, made whole for the
    known agents, then the families read at scrape time."""

    def __init__(self, source: Any, extra: ScrapeExtra) -> None:
        self._source = source
        self._extra = extra

    def collect(self) -> Iterator[Metric]:
        yield from complete_agent_families(self._source.collect(), self._extra.agents)
        yield from self._extra.families


def render_metrics(accept: str = "", extra: ScrapeExtra | None = None) -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept)
    directory = multiprocess_dir()
    source: Any = REGISTRY
    if directory is not None:
        # A fresh collector per scrape (prometheus_client docs): the per-process metrics
        # registered in REGISTRY are already in the directory's files and must not be exported
        # twice.
        cleanup_dead_processes(directory)
        source = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(source, extra or ScrapeExtra()))
    return encoder(registry), content_type


@never_cache
@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    extra = await scrape_read()
    # Merging the mmap files is file I/O; keep it off the event loop.
    body, content_type = await asyncio.to_thread(
        render_metrics, request.headers.get("Accept", ""), extra
    )
    return HttpResponse(body, content_type=content_type)
