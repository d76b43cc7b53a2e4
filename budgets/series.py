"""Time series and window totals of the traffic, for the console's charts, cards and sparklines.

Everything here reads ``TrafficRollup`` (minute, hour and day rows per agent; see
``budgets.rollups``), never the raw executions, with one query per
call whose rows are bounded by the window (at most 168 hour rows per agent), so a call costs the
same at any amount of history (docs/BENCHMARKS.md, "Issue 12: console series").

A window is a fixed number of buckets of one step, ending with the bucket that holds ``now``:

======  ====  ======  ==========================================================
window  step  points  source rows
======  ====  ======  ==========================================================
1h      60 s  60      minute rows (the last 59 whole minutes and the current one)
24h     1 h   24      hour rows
7d      1 h   168     hour rows
30d     1 d   30      day rows (UTC days)
======  ====  ======  ==========================================================

So a window covers between ``(points - 1)`` steps and ``points`` steps; totals (cards) cover the
same buckets as the charts, so the two always agree. The current, partial bucket comes from the
rollups too: it lags the raw executions by at most the refresh interval (``traffic-rollups-
refresh``, 15 s) plus the recorder's write-behind. Records that reach the database later than
the refresh's recomputed slice (15 minutes) are not in these rollups (docs/INTERFACES.md §4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from budgets.models import ALL_AGENTS, LATENCY_BUCKETS_MS, TrafficRollup, TrafficStep
from budgets.selectors import latency_percentile
from core.errors import ValidationFailed

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
STEPS: dict[str, int] = {
    "1h": TrafficStep.MINUTE,
    "24h": TrafficStep.HOUR,
    "7d": TrafficStep.HOUR,
    "30d": TrafficStep.DAY,
}
_SIZE = len(LATENCY_BUCKETS_MS) + 1

# The columns every selector reads (one list, so each query is the same shape).
TRAFFIC_FIELDS = (
    "start",
    "agent_name",
    "requests",
    "succeeded",
    "degraded",
    "failed",
    "cancelled",
    "cached",
    "fallbacks",
    "fallback_reasons",
    "retries",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
    "latency_sum_ms",
    "latency_count",
    "latency_buckets",
    "model_choices",
    "slow",
)
_COUNTS = (
    "requests",
    "succeeded",
    "degraded",
    "failed",
    "cancelled",
    "cached",
    "fallbacks",
    "retries",
    "input_tokens",
    "output_tokens",
    "latency_sum_ms",
    "latency_count",
    "slow",
)


def window_parse(value: str) -> str:
    """``value`` if it names a window, else ``ValidationFailed`` naming it and the allowed ones."""
    if value not in WINDOWS:
        allowed = ", ".join(WINDOWS)
        raise ValidationFailed([f"window: {value!r} is not one of {allowed}"])
    return value


# --- adding rollup rows up -----------------------------------------------------------------


def _add_counts(into: dict[str, int], more: Mapping[str, Any], sign: int = 1) -> None:
    for key, count in (more or {}).items():
        total = into.get(key, 0) + sign * int(count)
        if total:
            into[key] = total
        else:
            into.pop(key, None)


@dataclass
class TrafficTotals:
    """Rollup rows added up (a bucket's rows across agents, a window's rows, an hour's minutes).
    Mutable: :meth:`add` folds in one row of ``TrafficRollup`` (a dict of ``TRAFFIC_FIELDS``)."""

    requests: int = 0
    succeeded: int = 0
    degraded: int = 0
    failed: int = 0
    cancelled: int = 0
    cached: int = 0
    fallbacks: int = 0
    retries: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_sum_ms: int = 0
    latency_count: int = 0
    slow: int = 0
    cost_usd: Decimal = Decimal(0)
    saved_usd: Decimal = Decimal(0)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * _SIZE)
    fallback_reasons: dict[str, int] = field(default_factory=dict)
    model_choices: dict[str, int] = field(default_factory=dict)

    def add(self, row: Mapping[str, Any], sign: int = 1) -> None:
        """Add ``row`` (``sign`` -1: take it away, as the rollups' differences do)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + sign * row[name])
        self.cost_usd += sign * row["cost_usd"]
        self.saved_usd += sign * row["saved_usd"]
        buckets = self.latency_buckets
        for index, count in enumerate((row["latency_buckets"] or [])[:_SIZE]):
            buckets[index] += sign * count
        _add_counts(self.fallback_reasons, row["fallback_reasons"], sign)
        _add_counts(self.model_choices, row["model_choices"], sign)

    def is_zero(self) -> bool:
        return (
            all(getattr(self, name) == 0 for name in _COUNTS)
            and self.cost_usd == 0
            and self.saved_usd == 0
            and not any(self.latency_buckets)
            and not self.fallback_reasons
            and not self.model_choices
        )

    def is_negative(self) -> bool:
        """Something below zero: totals taken away that were never added."""
        return (
            any(getattr(self, name) < 0 for name in _COUNTS)
            or self.cost_usd < 0
            or self.saved_usd < 0
            or any(count < 0 for count in self.latency_buckets)
        )

    def rollup_values(self) -> dict[str, Any]:
        """The values of a ``TrafficRollup`` row holding these totals."""
        values: dict[str, Any] = {name: getattr(self, name) for name in _COUNTS}
        values.update(
            cost_usd=self.cost_usd,
            saved_usd=self.saved_usd,
            latency_buckets=list(self.latency_buckets),
            fallback_reasons=dict(sorted(self.fallback_reasons.items())),
            model_choices=dict(sorted(self.model_choices.items())),
            p50_ms=latency_percentile(self.latency_buckets, 0.5),
            p95_ms=latency_percentile(self.latency_buckets, 0.95),
        )
        return values


# --- the window's buckets ------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesPoint:
    at: float  # epoch seconds: the bucket's start (UTC)
    requests: int
    succeeded: int
    degraded: int
    failed: int
    fallbacks: int
    cached: int
    cost_usd: float
    p50_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class Series:
    window: str
    step_s: int
    points: list[SeriesPoint]  # every bucket of the window (zeros where no traffic), oldest first


@dataclass(frozen=True)
class _Span:
    step_s: int
    starts: tuple[datetime, ...]  # every bucket's start, oldest first
    now: datetime

    @property
    def first(self) -> datetime:
        return self.starts[0]


def window_span(window: str, now: datetime | None = None) -> _Span:
    """The buckets of ``window`` at ``now``: ``WINDOWS[window] / step`` of them, the last one
    holding ``now``. No query."""
    window_parse(window)
    at = (now or timezone.now()).astimezone(UTC)
    step = STEPS[window]
    count = int(WINDOWS[window].total_seconds()) // step
    last = int(at.timestamp()) // step * step
    starts = tuple(datetime.fromtimestamp(last - step * (count - 1 - i), UTC) for i in range(count))
    return _Span(step_s=step, starts=starts, now=at)


def _rows(span: _Span, agents: frozenset[str] | None, *, every: bool = False) -> QuerySet[Any]:
    """The window's rows: of ``agents``; with None, the every-agent rows (``every``: each
    agent's own rows instead)."""
    rows = TrafficRollup.objects.filter(
        step_s=span.step_s, start__gte=span.first, start__lte=span.starts[-1]
    ).order_by()
    if agents is not None:
        return rows.filter(agent_name__in=sorted(agents - {ALL_AGENTS}))
    if every:
        return rows.exclude(agent_name=ALL_AGENTS)
    return rows.filter(agent_name=ALL_AGENTS)


# A point read from one row: its stored percentiles, no histogram.
_POINT_FIELDS = (
    "start",
    "agent_name",
    "requests",
    "succeeded",
    "degraded",
    "failed",
    "fallbacks",
    "cached",
    "cost_usd",
    "p50_ms",
    "p95_ms",
)
_EMPTY = (0, 0, 0, 0, 0, 0, 0.0, None, None)


def _series(window: str, span: _Span, by_start: Mapping[datetime, tuple[Any, ...]]) -> Series:
    """``by_start``: a bucket's start -> its ``_POINT_FIELDS`` after ``start, agent_name``."""
    points = []
    for start in span.starts:
        values = by_start.get(start, _EMPTY)
        points.append(
            SeriesPoint(
                start.timestamp(),
                values[0],
                values[1],
                values[2],
                values[3],
                values[4],
                values[5],
                float(values[6]),
                values[7],
                values[8],
            )
        )
    return Series(window=window, step_s=span.step_s, points=points)


def traffic_series(
    *, window: str, agents: frozenset[str] | None = None, now: datetime | None = None
) -> Series:
    """The window's buckets summed over ``agents`` (None: every agent). One query.

    Every agent (the ``ALL_AGENTS`` rows) or one agent: one row per point, with its stored
    percentiles. Several agents: their rows are added up and p50/p95 come from the merged
    latency histograms of the bucket.
    """
    span = window_span(window, now)
    names = None if agents is None else agents - {ALL_AGENTS}
    if names is None or len(names) <= 1:
        return _series(
            window,
            span,
            {row[0]: row[2:] for row in _rows(span, names).values_list(*_POINT_FIELDS)},
        )
    merged: dict[datetime, list[Any]] = {}
    for row in _rows(span, names).values_list(*_POINT_FIELDS[:-2], "latency_buckets"):
        totals = merged.get(row[0])
        if totals is None:
            merged[row[0]] = [*row[2:-1], list((row[-1] or [])[:_SIZE]) + [0] * _SIZE]
            continue
        for index in range(6):
            totals[index] += row[2 + index]
        totals[6] += row[8]
        buckets = totals[7]
        for index, count in enumerate((row[-1] or [])[:_SIZE]):
            buckets[index] += count
    by_start = {
        start: (
            *totals[:7],
            latency_percentile(totals[7][:_SIZE], 0.5),
            latency_percentile(totals[7][:_SIZE], 0.95),
        )
        for start, totals in merged.items()
    }
    return _series(window, span, by_start)


def traffic_series_by_agent(
    *, window: str, agents: frozenset[str] | None = None, now: datetime | None = None
) -> dict[str, Series]:
    """Agent name -> its series over the window (the agents table's sparklines). One query,
    one row per agent and point (stored percentiles, no histogram).

    Every agent in ``agents`` has a series (all zeros without traffic); with ``agents`` None,
    every agent with traffic in the window. Sorted by agent name.
    """
    span = window_span(window, now)
    names = None if agents is None else agents - {ALL_AGENTS}
    per_agent: dict[str, dict[datetime, tuple[Any, ...]]] = {name: {} for name in names or ()}
    for row in _rows(span, names, every=True).values_list(*_POINT_FIELDS):
        per_agent.setdefault(row[1], {})[row[0]] = row[2:]
    return {name: _series(window, span, per_agent[name]) for name in sorted(per_agent)}


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def overview_totals(
    *, window: str, agents: frozenset[str] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """The window's totals over ``agents`` (None: every agent, from the ``ALL_AGENTS`` rows): the
    console's cards. One query.

    Same buckets as :func:`traffic_series`, so the cards and the charts agree. Rates are of the
    finished executions (``requests``): ``availability`` = succeeded / (requests - cancelled),
    i.e. the share of the calls a client did not abandon that a model answered (a fallback
    model or the cache counts; a degraded answer - the agent's canned fallback message - and a
    failure do not); ``success_rate`` = succeeded / requests (as ``/api/v1/stats/agents``);
    ``fallback_rate`` = fallbacks / requests; ``cache_hit_rate`` = cached / requests;
    ``errors`` = failed. Per-day figures divide by the time the buckets cover: from the first
    bucket's start to ``now``. A rate or latency is None when there is nothing to divide.
    """
    span = window_span(window, now)
    t = TrafficTotals()
    for row in _rows(span, agents).values(*TRAFFIC_FIELDS):
        t.add(row)
    days = max((span.now - span.first).total_seconds() / 86400, 1 / 1440)  # at least a minute
    return {
        "window": window,
        "step_s": span.step_s,
        "since": span.first,
        "until": span.now,
        "requests": t.requests,
        "requests_per_day": round(t.requests / days, 2),
        "availability": _ratio(t.succeeded, t.requests - t.cancelled),
        "success_rate": _ratio(t.succeeded, t.requests),
        "avg_latency_ms": round(t.latency_sum_ms / t.latency_count, 1) if t.latency_count else None,
        "p50_latency_ms": latency_percentile(t.latency_buckets, 0.5),
        "p95_latency_ms": latency_percentile(t.latency_buckets, 0.95),
        "cost_usd": float(t.cost_usd),
        "cost_per_day_usd": round(float(t.cost_usd) / days, 6),
        "fallbacks": t.fallbacks,
        "fallback_rate": _ratio(t.fallbacks, t.requests),
        "fallback_reasons": dict(sorted(t.fallback_reasons.items())),
        "cache_hit_rate": _ratio(t.cached, t.requests),
        "cached": t.cached,
        "saved_usd": float(t.saved_usd),
        "errors": t.failed,
        "succeeded": t.succeeded,
        "degraded": t.degraded,
        "failed": t.failed,
        "cancelled": t.cancelled,
        "retries": t.retries,
        "input_tokens": t.input_tokens,
        "output_tokens": t.output_tokens,
    }
