"""Reads for budgets, the ledger and the rollups: budget state and forecast, per-agent stats.

Dashboards and the API read these; none of them scans raw executions. Budget counters (what
was spent and is reserved in the current window) live in the shared state, not the database:
callers read them with ``StateStore.budget_usage`` (or :func:`budget_usage_read` from sync
code) and pass them in, so the selectors themselves only query the database.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from django.db.models import F, Q, Sum

from agents.access.auth import Principal
from agents.backends import on_state_sync
from agents.runtime.budgets import MICROS, agent_call_floor_micros, window_bounds
from agents.runtime.ports import ConfigSource
from agents.runtime.state import BudgetWindow
from agents.runtime.types import BudgetRule
from budgets.models import (
    ALL_AGENTS,
    LATENCY_BUCKETS_MS,
    Budget,
    BudgetScope,
    SpendEntry,
    SpendRollup,
    TrafficRollup,
)
from budgets.rules import budget_rule
from core.errors import NotFound

BudgetState = Literal["ok", "warning", "exceeded", "paused"]
RATE_LOOKBACK = timedelta(minutes=60)  # the forecast's "recent rate"
_USD = Decimal("0.000001")


def micros_to_usd(micros: int) -> Decimal:
    return (Decimal(micros) / MICROS).quantize(_USD)


# --- which budgets a caller may see --------------------------------------------------------


def _visible(principal: Principal | None) -> Q:
    """Every budget for an unrestricted key; a key limited to some agents sees those agents'
    budgets and its own key's budget (not the global one: it sums everyone's spend)."""
    if principal is None or not principal.agents:
        return Q()
    return Q(scope=BudgetScope.AGENT, agent__name__in=sorted(principal.agents)) | Q(
        scope=BudgetScope.API_KEY, api_key_id=principal.key_id
    )


def budget_list(*, principal: Principal | None = None) -> list[Budget]:
    """One query."""
    return list(
        Budget.objects.select_related("agent", "api_key").filter(_visible(principal)).order_by("id")
    )


def budget_get(*, budget_id: int, principal: Principal | None = None) -> Budget:
    budget = (
        Budget.objects.select_related("agent", "api_key")
        .filter(_visible(principal), pk=budget_id)
        .first()
    )
    if budget is None:
        raise NotFound(f"budget {budget_id} does not exist")
    return budget


def budget_scope_label(budget: Budget) -> str:
    """The bounded ``scope`` label of ``agent_budget_remaining_dollars``: ``global``,
    ``agent:<name>``, ``api_key:<prefix>``; a monthly budget's label ends in ``:monthly``."""
    if budget.scope == BudgetScope.AGENT and budget.agent is not None:
        label = f"agent:{budget.agent.name}"
    elif budget.scope == BudgetScope.API_KEY and budget.api_key is not None:
        label = f"api_key:{budget.api_key.prefix}"
    else:
        label = "global"
    return label if budget.window == "daily" else f"{label}:{budget.window}"


# --- windows and counters ------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetSpan:
    """A budget's current window, as the runtime computes it (same key, same bounds)."""

    budget: Budget
    rule: BudgetRule
    window_id: str  # 2026-11-28 or 2026-11
    start: datetime
    end: datetime

    @property
    def key(self) -> str:
        return f"budget:{self.rule.id}:{self.window_id}"

    @property
    def counted_from(self) -> datetime:
        """Where the budget's counting starts in this window: its start, or the budget's
        creation when it was created during the window (no counter held earlier spend)."""
        return max(self.start, self.budget.created_at)


def budget_spans(budgets: Iterable[Budget], *, now: datetime) -> list[BudgetSpan]:
    """No query (the budgets' agents and keys must be loaded, as :func:`budget_list` does)."""
    spans = []
    for budget in budgets:
        rule = budget_rule(budget)
        window_id, start, end = window_bounds(rule, now.timestamp())
        spans.append(
            BudgetSpan(
                budget=budget,
                rule=rule,
                window_id=window_id,
                start=datetime.fromtimestamp(start, UTC),
                end=datetime.fromtimestamp(end, UTC),
            )
        )
    return spans


def budget_usage_read(keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """``key -> (spent, reserved)`` micro-USD from the shared state, for sync code (jobs).

    Runs its own short event loop, so call it from a thread without one (a Celery worker, the
    embedded worker's threads). Embedded mode reads the process's ``MemoryState`` (the job runs
    in the serve process, beside the traffic that fills it); distributed mode reads Redis with a
    client opened and closed here (a client cannot outlive its loop).
    """

    if not keys:
        return {}
    return on_state_sync(lambda store: store.budget_usage(keys))


def budget_windows_read(keys: tuple[str, ...]) -> dict[str, BudgetWindow]:
    """Like :func:`budget_usage_read`, with what each window refused (``BudgetWindow``): the
    smallest amount refused is an amount the window can no longer admit."""

    if not keys:
        return {}
    return on_state_sync(lambda store: store.budget_windows(keys))


def span_filter(span: BudgetSpan) -> Q:
    """The ledger entries a budget covers (time aside): all, its agent's, or its key's."""
    budget = span.budget
    if budget.scope == BudgetScope.AGENT:
        return Q(agent_name=budget.agent.name if budget.agent is not None else "")
    if budget.scope == BudgetScope.API_KEY:
        return Q(api_key_id=budget.api_key_id)
    return Q()


# --- state and forecast --------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetStatus:
    """One budget in its current window: the API's item and the metrics' source."""

    id: int
    scope: str
    target: str
    label: str
    window: str
    window_id: str
    window_starts_at: datetime
    window_ends_at: datetime
    timezone: str
    limit_usd: Decimal  # effective: the configured limit plus an active raise
    base_limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    remaining_usd: Decimal  # 0 while paused
    forecast_usd: Decimal
    rate_usd_per_hour: Decimal
    predictability: float | None  # forecast / limit: above 1.0 means on course to run out
    state: BudgetState
    threshold: Literal["warn", "alert"] | None
    warn_at_pct: int
    alert_at_pct: int
    paused: bool
    raise_usd: Decimal | None
    raise_until: datetime | None
    refused: int = 0  # admissions refused for this budget in the window
    floor_usd: Decimal | None = None  # the smallest call it must still admit (None: unknown)

    def as_dict(self) -> dict[str, Any]:
        def money(value: Decimal | None) -> float | None:
            return None if value is None else float(value)

        return {
            "id": self.id,
            "scope": self.scope,
            "target": self.target,
            "window": self.window,
            "limit_usd": money(self.limit_usd),
            "spent_usd": money(self.spent_usd),
            "reserved_usd": money(self.reserved_usd),
            "remaining_usd": money(self.remaining_usd),
            "forecast_usd": money(self.forecast_usd),
            "state": self.state,
            # Beyond the fields of docs/INTERFACES.md §4:
            "threshold": self.threshold,
            "base_limit_usd": money(self.base_limit_usd),
            "warn_at_pct": self.warn_at_pct,
            "alert_at_pct": self.alert_at_pct,
            "paused": self.paused,
            "raise_usd": money(self.raise_usd),
            "raise_until": self.raise_until,
            "timezone": self.timezone,
            "window_id": self.window_id,
            "window_starts_at": self.window_starts_at,
            "window_ends_at": self.window_ends_at,
            "rate_usd_per_hour": money(self.rate_usd_per_hour),
            "predictability": self.predictability,
            "metric_scope": self.label,
            "refused": self.refused,
            "floor_usd": money(self.floor_usd),
        }


def budget_state(
    *,
    limit: Decimal,
    used: Decimal,
    paused: bool,
    warn_at_pct: int,
    alert_at_pct: int,
    floor: Decimal | None = None,
) -> tuple[BudgetState, Literal["warn", "alert"] | None]:
    """paused > exceeded > warning (alert, then warn threshold) > ok. ``used`` is spent plus
    reserved: what the runtime counts against the limit when it admits a call. Exceeded as soon
    as what is left cannot admit ``floor`` (the smallest call the budget must admit: its
    agents' worst-case call, or the smallest amount it refused in the window), even below
    100% used."""
    if paused:
        return "paused", None
    if used >= limit or (floor is not None and floor > 0 and limit - used < floor):
        return "exceeded", None
    if used * 100 >= limit * alert_at_pct:
        return "warning", "alert"
    if used * 100 >= limit * warn_at_pct:
        return "warning", "warn"
    return "ok", None


def _recent_spend(spans: list[BudgetSpan], now: datetime) -> list[tuple[Decimal, float]]:
    """Per span: ledger spend since ``max(now - 60 min, window start)`` and that duration (s).
    One query for all of them, restricted to the last hour as a whole so that it reads the
    ``at`` index range, not the ledger (the per-span FILTERs alone scan every row: 300 ms at
    1M entries, 4 s at 15M)."""
    if not spans:
        return []
    starts = [max(now - RATE_LOOKBACK, span.start) for span in spans]
    totals = SpendEntry.objects.filter(at__gte=min(starts), at__lte=now).aggregate(
        **{
            f"s{i}": Sum("cost_usd", filter=span_filter(span) & Q(at__gte=start, at__lte=now))
            for i, (span, start) in enumerate(zip(spans, starts, strict=True))
        }
    )
    return [
        (Decimal(totals[f"s{i}"] or 0), max(0.0, (now - start).total_seconds()))
        for i, start in enumerate(starts)
    ]


def budget_call_floors(budgets: Iterable[Budget], config: ConfigSource) -> dict[int, int]:
    """Budget id -> micro-USD of the smallest worst-case call among the agents it covers (its
    agent; every agent for a global budget; the key's agents for a key budget). No query: the
    agents and prices come from ``config`` (the process's live config)."""
    names = tuple(config.snapshot.agents)  # type: ignore[attr-defined]
    floors: dict[int, int] = {}
    cache: dict[str, int | None] = {}

    def floor(name: str) -> int | None:
        if name not in cache:
            agent = config.agent(name)
            cache[name] = (
                None if agent is None else agent_call_floor_micros(agent, config.deployments)
            )
        return cache[name]

    for budget in budgets:
        if budget.scope == BudgetScope.AGENT:
            covered: tuple[str, ...] = (budget.agent.name,) if budget.agent is not None else ()
        elif budget.scope == BudgetScope.API_KEY and budget.api_key is not None:
            key = config.snapshot.keys.get(budget.api_key.prefix)  # type: ignore[attr-defined]
            allowed = key.agents if key is not None else frozenset()
            covered = tuple(n for n in names if not allowed or n in allowed)
        else:
            covered = names
        known = [f for f in (floor(n) for n in covered) if f is not None]
        if known:
            floors[budget.pk] = min(known)
    return floors


def budget_statuses(
    *,
    spans: list[BudgetSpan],
    usage: Mapping[str, tuple[int, int] | BudgetWindow],
    now: datetime,
    floors: Mapping[int, int] | None = None,
    rates: Mapping[int, Decimal] | None = None,
) -> list[BudgetStatus]:
    """State and forecast of each budget. One query (the ledger's recent spend), and one more
    when a window is unknown to the shared state (then its spend is the ledger's).

    ``forecast_usd = spent + rate x time left``, where the rate is the ledger's spend over the
    last 60 minutes (or since the window began, if that is shorter) per second. ``rates``
    (budget id -> USD per second, e.g. from an earlier call's ``rate_usd_per_hour``): when it
    has every budget, the ledger's recent spend is not read. ``floors``
    (:func:`budget_call_floors`) and the smallest amount refused in the window decide
    ``exceeded`` below 100%.
    """
    windows = {
        key: value if isinstance(value, BudgetWindow) else BudgetWindow(*value)
        for key, value in usage.items()
    }
    unknown = [span for span in spans if span.key in windows and not windows[span.key].ready]
    if unknown:  # lost or not rebuilt yet: the ledger says what was spent
        ledger = ledger_micros(unknown)
        for span in unknown:
            windows[span.key] = BudgetWindow(ledger[span.key], 0, ready=False)
    if rates is not None and all(span.budget.pk in rates for span in spans):
        per_second = [rates[span.budget.pk] for span in spans]
    else:
        per_second = [
            recent / Decimal(seconds) if seconds > 0 else Decimal(0)
            for recent, seconds in _recent_spend(spans, now)
        ]
    statuses = []
    for span, rate in zip(spans, per_second, strict=True):
        budget = span.budget
        window = windows.get(span.key, BudgetWindow(0, 0))
        spent, reserved = micros_to_usd(window.spent), micros_to_usd(window.reserved)
        floor_micros = max(
            (floors or {}).get(budget.pk, 0),
            window.min_refused,
        )
        floor_usd = micros_to_usd(floor_micros) if floor_micros else None
        raised = (
            budget.raise_usd
            if budget.raise_usd is not None
            and budget.raise_until is not None
            and now < budget.raise_until
            else None
        )
        limit = budget.limit_usd + (raised or 0)
        used = spent + reserved
        state, threshold = budget_state(
            limit=limit,
            used=used,
            paused=budget.paused,
            warn_at_pct=budget.warn_at_pct,
            alert_at_pct=budget.alert_at_pct,
            floor=floor_usd,
        )
        left = Decimal(max(0.0, (span.end - now).total_seconds()))
        forecast = (spent + rate * left).quantize(_USD)
        statuses.append(
            BudgetStatus(
                id=budget.pk,
                scope=budget.scope,
                target=budget.target,
                label=budget_scope_label(budget),
                window=budget.window,
                window_id=span.window_id,
                window_starts_at=span.start,
                window_ends_at=span.end,
                timezone=budget.timezone,
                limit_usd=limit,
                base_limit_usd=budget.limit_usd,
                spent_usd=spent,
                reserved_usd=reserved,
                remaining_usd=Decimal(0) if budget.paused else max(Decimal(0), limit - used),
                forecast_usd=forecast,
                rate_usd_per_hour=(rate * 3600).quantize(_USD),
                predictability=round(float(forecast / limit), 4) if limit > 0 else None,
                state=state,
                threshold=threshold,
                warn_at_pct=budget.warn_at_pct,
                alert_at_pct=budget.alert_at_pct,
                paused=budget.paused,
                raise_usd=raised,
                raise_until=budget.raise_until if raised is not None else None,
                refused=window.refused,
                floor_usd=floor_usd,
            )
        )
    return statuses


def ledger_micros(spans: list[BudgetSpan]) -> dict[str, int]:
    """Window key -> micro-USD the ledger charged in it since the budget existed
    (``charged_micros``: what the counters settle). One query."""
    if not spans:
        return {}
    # The whole range as a WHERE too, so the ``at`` index bounds the read (FILTERs do not).
    totals = SpendEntry.objects.filter(
        at__gte=min(span.counted_from for span in spans), at__lt=max(span.end for span in spans)
    ).aggregate(
        **{
            f"m{i}": Sum(
                "charged_micros",
                filter=span_filter(span) & Q(at__gte=span.counted_from, at__lt=span.end),
            )
            for i, span in enumerate(spans)
        }
    )
    return {span.key: int(totals[f"m{i}"] or 0) for i, span in enumerate(spans)}


# --- per-agent stats from the rollups ------------------------------------------------------

# The table's windows: the trailing ones read the traffic rollups (step, length), the others the
# daily rollups (days before today, UTC).
STATS_TRAFFIC_WINDOWS: dict[str, tuple[int, timedelta]] = {
    "1h": (60, timedelta(hours=1)),
    "24h": (3600, timedelta(hours=24)),
}
STATS_DAILY_WINDOWS: dict[str, int] = {"7d": 7, "30d": 30}
STATS_WINDOWS = ("1h", "24h", "7d", "30d")

STATS_COLUMNS = (
    "agent",
    "requests",
    "requests_per_day",
    "succeeded",
    "degraded",
    "failed",
    "cancelled",
    "success_rate",
    "avg_latency_ms",
    "p95_latency_ms",
    "cost_usd",
    "cost_per_day_usd",
    "input_tokens",
    "output_tokens",
    "cache_hits",
    "cache_hit_rate",
    "saved_usd",
    "model_choices",
    # Issue 12, appended:
    "fallbacks",
    "fallback_rate",
    "fallback_reasons",
)


def latency_percentile(buckets: list[int], fraction: float) -> float | None:
    """The ``fraction`` quantile of a ``LATENCY_BUCKETS_MS`` histogram, interpolated linearly
    inside its bucket (the overflow bucket answers its lower bound: all we know)."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = fraction * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index >= len(LATENCY_BUCKETS_MS):
                return float(LATENCY_BUCKETS_MS[-1])
            low = float(LATENCY_BUCKETS_MS[index - 1]) if index else 0.0
            high = float(LATENCY_BUCKETS_MS[index])
            return round(low + (high - low) * (rank - seen) / count, 1)
        seen += count
    return float(LATENCY_BUCKETS_MS[-1])  # pragma: no cover - rank <= total always stops above


def merge_buckets(into: list[int], more: list[int]) -> list[int]:
    size = len(LATENCY_BUCKETS_MS) + 1
    merged = (into + [0] * size)[:size]
    for index, count in enumerate(more[:size]):
        merged[index] += int(count)
    return merged


@dataclass
class _AgentTotals:
    first: datetime
    requests: int = 0
    succeeded: int = 0
    degraded: int = 0
    failed: int = 0
    cancelled: int = 0
    cached: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    saved: Decimal = Decimal(0)
    latency_sum: int = 0
    latency_count: int = 0
    buckets: list[int] = field(default_factory=list)
    choices: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentStats:
    window: str
    since: datetime
    until: datetime
    items: list[dict[str, Any]]
    # Every agent's rows added up ("agent" is ""): counts and money summed, rates of the sums,
    # latency from the merged histograms (the console's totals row).
    total: dict[str, Any] | None = None


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def agent_stats_by_window(
    *, window: str, now: datetime, agents: frozenset[str] | None = None
) -> AgentStats:
    """The per-agent table over ``window`` (``1h``, ``24h``, ``7d`` or ``30d``). One query.

    ``1h`` reads the minute rows of ``TrafficRollup`` and ``24h`` its hour rows, from the bucket
    holding ``now - window`` on: a trailing window, at least as long as it says and at most one
    step (a minute, an hour) longer. Records reach those rollups within the refresh interval
    of ``budgets.rollups.rollups_advance``, late ones included.
    ``7d`` and ``30d`` read the daily ``SpendRollup``: the 7 (30) days before today and today,
    UTC. Per-day figures divide by the time the read rollups actually cover for that agent:
    from the start of its first bucket with data (within the window) until ``now``. ``agents``
    limits the rows (a restricted API key).
    """
    fields = (
        "agent_name",
        "requests",
        "succeeded",
        "degraded",
        "failed",
        "cancelled",
        "cached",
        "fallbacks",
        "fallback_reasons",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "saved_usd",
        "latency_sum_ms",
        "latency_count",
        "latency_buckets",
        "model_choices",
    )
    if window in STATS_TRAFFIC_WINDOWS:
        step, length = STATS_TRAFFIC_WINDOWS[window]
        since = datetime.fromtimestamp(int((now - length).timestamp()) // step * step, UTC)
        traffic = TrafficRollup.objects.filter(
            step_s=step, start__gte=since, start__lte=now
        ).exclude(agent_name=ALL_AGENTS)
        if agents is not None:
            traffic = traffic.filter(agent_name__in=sorted(agents))
        rows = list(traffic.order_by("agent_name", "start").values(*fields, first=F("start")))
    else:
        days = STATS_DAILY_WINDOWS[window]
        today = now.astimezone(UTC).date()
        first = today - timedelta(days=days)
        since = datetime.combine(first, datetime.min.time(), tzinfo=UTC)
        daily = SpendRollup.objects.filter(day__gte=first, day__lte=today)
        if agents is not None:
            daily = daily.filter(agent_name__in=sorted(agents))
        rows = [
            row | {"first": datetime.combine(row["day"], datetime.min.time(), tzinfo=UTC)}
            for row in daily.order_by("agent_name", "day").values(*fields, "day")
        ]
    totals: dict[str, _AgentTotals] = {}
    for row in rows:
        t = totals.get(row["agent_name"])
        if t is None:
            t = totals[row["agent_name"]] = _AgentTotals(first=row["first"])
        _agent_add(t, row)
    items = [_agent_item(name, t, now) for name, t in totals.items()]
    total = _AgentTotals(first=min((t.first for t in totals.values()), default=since))
    for t in totals.values():
        _agent_merge(total, t)
    return AgentStats(
        window=window, since=since, until=now, items=items, total=_agent_item("", total, now)
    )


def _agent_add(t: _AgentTotals, row: Mapping[str, Any]) -> None:
    for name in ("requests", "succeeded", "degraded", "failed", "cancelled", "cached"):
        setattr(t, name, getattr(t, name) + row[name])
    t.fallbacks += row["fallbacks"]
    t.input_tokens += row["input_tokens"]
    t.output_tokens += row["output_tokens"]
    t.cost += row["cost_usd"]
    t.saved += row["saved_usd"]
    t.latency_sum += row["latency_sum_ms"]
    t.latency_count += row["latency_count"]
    if not t.buckets:
        t.buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    buckets = t.buckets
    for index, count in enumerate((row["latency_buckets"] or [])[: len(buckets)]):
        buckets[index] += count
    for choice, count in (row["model_choices"] or {}).items():
        t.choices[choice] = t.choices.get(choice, 0) + int(count)
    for reason, count in (row["fallback_reasons"] or {}).items():
        t.reasons[reason] = t.reasons.get(reason, 0) + int(count)


def _agent_merge(into: _AgentTotals, t: _AgentTotals) -> None:
    """Adds ``t`` into ``into``: counts and money add up, latency histograms merge."""
    _agent_add(
        into,
        {
            "requests": t.requests,
            "succeeded": t.succeeded,
            "degraded": t.degraded,
            "failed": t.failed,
            "cancelled": t.cancelled,
            "cached": t.cached,
            "fallbacks": t.fallbacks,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cost_usd": t.cost,
            "saved_usd": t.saved,
            "latency_sum_ms": t.latency_sum,
            "latency_count": t.latency_count,
            "latency_buckets": t.buckets,
            "model_choices": t.choices,
            "fallback_reasons": t.reasons,
        },
    )


def _agent_item(name: str, t: _AgentTotals, now: datetime) -> dict[str, Any]:
    span_days = max((now - t.first).total_seconds() / 86400, 1 / 1440)  # at least a minute
    return {
        "agent": name,
        "requests": t.requests,
        "requests_per_day": round(t.requests / span_days, 2),
        "succeeded": t.succeeded,
        "degraded": t.degraded,
        "failed": t.failed,
        "cancelled": t.cancelled,
        "success_rate": _ratio(t.succeeded, t.requests),
        "avg_latency_ms": round(t.latency_sum / t.latency_count, 1) if t.latency_count else None,
        "p95_latency_ms": latency_percentile(t.buckets, 0.95),
        "cost_usd": float(t.cost),
        "cost_per_day_usd": round(float(t.cost) / span_days, 6),
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
        "cache_hits": t.cached,
        "cache_hit_rate": _ratio(t.cached, t.requests),
        "saved_usd": float(t.saved),
        "model_choices": dict(sorted(t.choices.items())),
        "fallbacks": t.fallbacks,
        "fallback_rate": _ratio(t.fallbacks, t.requests),
        "fallback_reasons": dict(sorted(t.reasons.items())),
    }


def agent_stats_csv(stats: AgentStats) -> str:
    """``stats`` as CSV (``GET /api/v1/stats/agents?format=csv``, the console's download): a
    header row of ``STATS_COLUMNS``, then one row per agent, CRLF line ends."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(STATS_COLUMNS)
    for item in stats.items:
        writer.writerow([stats_csv_value(item[column]) for column in STATS_COLUMNS])
    return buffer.getvalue()


def stats_csv_filename(window: str) -> str:
    return f"agent-stats-{window}.csv"


def stats_csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, dict):
        return ";".join(f"{key}={count}" for key, count in value.items())
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    return str(value)
