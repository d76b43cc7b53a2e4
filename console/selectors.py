"""Reads for the live dashboard (``WS /ws/dashboard/``, :mod:`console.dashboard`).

Two reads, both for the whole deployment (the socket filters per viewer afterwards):

* :func:`dashboard_catalog`: what exists (agents, deployments, budgets). Three queries; the
  ticker reads it again only when the config version moves.
* :func:`dashboard_figures`: what happened, per agent: the last minute, today (UTC), what is
  running or queued now, unresolved incidents and budget states. At most six queries, run once
  per tick per process whatever the number of open sockets.

"Today" comes from the daily rollups (``SpendRollup``, refreshed every minute) plus the
executions created since that refresh, so the dashboard scans at most about two minutes of raw
executions, served by the ``execution_time`` index. An execution still running when the rollup
was refreshed is counted at the next refresh (a shortfall of at most the executions in flight
then, for at most a minute).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import BooleanField, Case, Count, IntegerField, Max, Sum, Value, When

from agents.config.live import agent_config
from agents.models import Agent, Execution
from agents.runtime.types import AgentConfig
from agents.selectors import deployment_rows
from budgets.metrics import SloObjective
from budgets.models import LATENCY_BUCKETS_MS, Budget, SpendRollup
from budgets.selectors import BudgetSpan, BudgetStatus, budget_list, budget_statuses
from incidents.models import Incident, IncidentStatus

WINDOW = timedelta(seconds=60)  # "the last minute"
FINISHED = ("succeeded", "degraded", "failed", "cancelled")
ACTIVE = ("running", "queued")
OLDER = -2  # the latency bucket of executions outside the last minute (not needed)
NO_LATENCY = -1


# --- catalog -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogAgent:
    config: AgentConfig  # the runtime's view (breaker settings included)
    enabled: bool

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def models(self) -> tuple[str, ...]:
        """Its model, fallbacks and cheap model: every logical model it may call."""
        names = (self.config.model, *self.config.fallback_models, self.config.cheap_model or "")
        return tuple(dict.fromkeys(name for name in names if name))


@dataclass(frozen=True)
class DashboardCatalog:
    agents: tuple[CatalogAgent, ...]
    deployments: tuple[dict[str, Any], ...]  # ``agents.selectors.deployment_rows`` items
    budgets: tuple[Budget, ...]  # with their agent and key loaded
    slos: tuple[SloObjective, ...] = ()  # each agent's, in the order of ``agents``


def dashboard_catalog() -> DashboardCatalog:
    """Every agent (disabled ones too), deployment and budget. Three queries."""
    agents = tuple(Agent.objects.order_by("name"))
    return DashboardCatalog(
        agents=tuple(CatalogAgent(agent_config(agent), agent.enabled) for agent in agents),
        deployments=tuple(deployment_rows()),
        budgets=tuple(budget_list()),
        slos=tuple(
            SloObjective(
                agent.name, agent.slo_availability, agent.slo_latency_ms, agent.slo_latency_quantile
            )
            for agent in agents
        ),
    )


# --- figures -------------------------------------------------------------------------------


@dataclass
class Tally:
    """Finished executions by status, their cost, and (last minute) a latency histogram."""

    requests: int = 0
    succeeded: int = 0
    degraded: int = 0
    failed: int = 0
    cancelled: int = 0
    cached: int = 0
    cost_usd: Decimal = Decimal(0)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))

    def add(self, *, status: str, n: int, cached: bool, cost: Decimal) -> None:
        self.requests += n
        setattr(self, status, getattr(self, status) + n)
        if cached:
            self.cached += n
        self.cost_usd += cost

    def merge(self, other: Tally) -> None:
        for name in ("requests", "succeeded", "degraded", "failed", "cancelled", "cached"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.cost_usd += other.cost_usd
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]

    @property
    def errors(self) -> int:
        """Executions that got no model answer: degraded (the fallback message) or failed.
        The complement of the stats API's ``success_rate`` (cancelled aside)."""
        return self.degraded + self.failed


@dataclass
class AgentFigures:
    last_minute: Tally = field(default_factory=Tally)
    today: Tally = field(default_factory=Tally)
    running: int = 0
    queued: int = 0


@dataclass(frozen=True)
class OpenIncidents:
    """Unresolved incidents of one agent ("" = deployment-wide) in one status."""

    agent: str
    status: str
    count: int
    newest: dict[str, Any]


@dataclass(frozen=True)
class DashboardFigures:
    now: datetime
    day: str  # the UTC day "today" means
    rolled_up_at: datetime | None  # the rollup refresh today's figures build on (None: none)
    agents: dict[str, AgentFigures]
    incidents: tuple[OpenIncidents, ...]
    budgets: tuple[BudgetStatus, ...] | None  # None: the counters could not be read


def _bucket(window_start: datetime) -> Case:
    whens = [
        When(created_at__lt=window_start, then=Value(OLDER)),
        When(latency_ms__isnull=True, then=Value(NO_LATENCY)),
    ]
    whens += [
        When(latency_ms__lte=bound, then=Value(index))
        for index, bound in enumerate(LATENCY_BUCKETS_MS)
    ]
    return Case(*whens, default=Value(len(LATENCY_BUCKETS_MS)), output_field=IntegerField())


def _flag(**lookup: Any) -> Case:
    return Case(When(**lookup, then=Value(True)), default=Value(False), output_field=BooleanField())


def _today_from_rollups(agents: dict[str, AgentFigures], day_start: datetime) -> datetime | None:
    """Add today's rollups; returns when they were computed (None: no rollup today)."""
    stamp: datetime | None = None
    rows = (
        SpendRollup.objects.filter(day=day_start.date())
        .values("agent_name")
        .annotate(
            requests=Sum("requests"),
            succeeded=Sum("succeeded"),
            degraded=Sum("degraded"),
            failed=Sum("failed"),
            cancelled=Sum("cancelled"),
            cached=Sum("cached"),
            cost=Sum("cost_usd"),
            stamp=Max("updated_at"),
        )
        .order_by()
    )
    for row in rows:
        today = agents.setdefault(row["agent_name"], AgentFigures()).today
        for name in ("requests", "succeeded", "degraded", "failed", "cancelled", "cached"):
            setattr(today, name, getattr(today, name) + (row[name] or 0))
        today.cost_usd += row["cost"] or 0
        if stamp is None or row["stamp"] > stamp:
            stamp = row["stamp"]
    return stamp


def _recent_executions(
    agents: dict[str, AgentFigures], *, window_start: datetime, since: datetime
) -> None:
    """The last minute (with latencies), and today's executions created since ``since``."""
    groups = (
        Execution.objects.filter(created_at__gte=min(window_start, since), status__in=FINISHED)
        .annotate(
            recent=_flag(created_at__gte=window_start),
            fresh=_flag(created_at__gte=since),
            bucket=_bucket(window_start),
        )
        .values("agent_name", "status", "cached", "recent", "fresh", "bucket")
        .annotate(n=Count("id"), cost=Sum("cost_usd"))
        .order_by()
    )
    for g in groups:
        figures = agents.setdefault(g["agent_name"], AgentFigures())
        n, cost = g["n"], g["cost"] or Decimal(0)
        if g["recent"]:
            figures.last_minute.add(status=g["status"], n=n, cached=g["cached"], cost=cost)
            if g["bucket"] >= 0:
                figures.last_minute.buckets[g["bucket"]] += n
        if g["fresh"]:
            figures.today.add(status=g["status"], n=n, cached=g["cached"], cost=cost)


def _in_progress(agents: dict[str, AgentFigures]) -> None:
    rows = (
        Execution.objects.filter(status__in=ACTIVE)
        .values("agent_name", "status")
        .annotate(n=Count("id"))
        .order_by()
    )
    for row in rows:
        figures = agents.setdefault(row["agent_name"], AgentFigures())
        if row["status"] == "running":
            figures.running += row["n"]
        else:
            figures.queued += row["n"]


def _open_incidents() -> tuple[OpenIncidents, ...]:
    """Counts per agent and status, each with its newest incident. One or two queries."""
    groups = list(
        Incident.objects.exclude(status=IncidentStatus.RESOLVED)
        .values("agent_name", "status")
        .annotate(n=Count("id"), newest=Max("id"))
        .order_by()
    )
    if not groups:
        return ()
    newest = {
        row["id"]: row
        for row in Incident.objects.filter(pk__in=[g["newest"] for g in groups]).values(
            "id", "title", "kind", "severity", "status", "agent_name", "opened_at"
        )
    }
    found = []
    for g in groups:
        row = newest.get(g["newest"])
        if row is None:  # resolved and deleted in between: counted next tick
            continue
        found.append(
            OpenIncidents(
                agent=g["agent_name"],
                status=g["status"],
                count=g["n"],
                newest={
                    "id": row["id"],
                    "title": row["title"],
                    "kind": row["kind"],
                    "severity": row["severity"],
                    "status": row["status"],
                    "agent": row["agent_name"] or None,
                    "opened_at": row["opened_at"].timestamp(),
                },
            )
        )
    return tuple(found)


def dashboard_figures(
    *,
    now: datetime,
    spans: list[BudgetSpan],
    usage: Mapping[str, tuple[int, int]] | None,
) -> DashboardFigures:
    """Per-agent figures, unresolved incidents and budget states (``usage``: the budget
    counters of ``spans``, read from the shared state; None skips the budgets).

    Queries: today's rollups, recent executions, running and queued executions, unresolved
    incidents (and their newest rows, when there are any), budgets' recent spend (when there
    are budgets): at most six.
    """
    now = now.astimezone(UTC)
    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    agents: dict[str, AgentFigures] = {}
    rolled_up_at = _today_from_rollups(agents, day_start)
    since = max(rolled_up_at or day_start, day_start)
    _recent_executions(agents, window_start=now - WINDOW, since=since)
    _in_progress(agents)
    incidents = _open_incidents()
    budgets = (
        tuple(budget_statuses(spans=spans, usage=usage, now=now)) if usage is not None else None
    )
    return DashboardFigures(
        now=now,
        day=day_start.date().isoformat(),
        rolled_up_at=rolled_up_at,
        agents=agents,
        incidents=incidents,
        budgets=budgets,
    )
