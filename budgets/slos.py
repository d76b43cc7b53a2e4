"""Service level indicators, error budgets and burn rates per agent (docs/OPERATIONS.md, "SLOs").

Everything here reads ``TrafficRollup`` (never the raw executions): its minute rows for the
5m, 30m, 1h and 6h windows and its hour rows for 24h and 30d, each as one grouped aggregate,
so a call is three queries (the agents, the minute rows, the hour rows) at any history.

Definitions (the API, the console, the incident job and the Prometheus rules agree):

- valid: finished executions whose status is succeeded, degraded or failed (cancelled, queued
  and running ones are not counted);
- availability: good = succeeded (answered by the primary model, a fallback model or the
  cache); degraded (the agent's fallback message was served) and failed are bad;
- latency: good = a valid execution whose ``latency_ms`` is at most the agent's
  ``slo.latency_ms`` (``TrafficRollup.slow`` counts the others, against the threshold the agent
  had when its minute was rolled up);
- error budget = 1 - objective; burn rate = (bad / valid) / (1 - objective) over a window;
  error budget remaining = 1 - bad / ((1 - objective) x valid) over 30 days (negative once the
  budget is spent).

A window is the buckets of its step from the one ``points - 1`` steps before the bucket that
holds ``now`` up to that one (as ``budgets.series``): it covers between ``points - 1`` and
``points`` steps, the current bucket lagging the traffic by at most the rollup refresh (15 s).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db.models import F, Q, Sum
from django.db.models.functions import TruncDay
from django.utils import timezone

from agents.models import Agent
from budgets.models import ALL_AGENTS, TrafficRollup, TrafficStep

SLIS = ("availability", "latency")
# window -> (step, points)
SLO_WINDOWS: dict[str, tuple[int, int]] = {
    "5m": (TrafficStep.MINUTE, 5),
    "30m": (TrafficStep.MINUTE, 30),
    "1h": (TrafficStep.MINUTE, 60),
    "6h": (TrafficStep.MINUTE, 360),
    "24h": (TrafficStep.HOUR, 24),
    "30d": (TrafficStep.HOUR, 720),
}
BUDGET_WINDOW = "30d"  # the window the objective and its error budget are over
# The SRE workbook's multiwindow, multi-burn-rate alerts (a 30-day budget): spending 2% of it
# in an hour (14.4x) pages; 5% in 6 hours (6x) is a ticket. The short window of each (1/12 of
# the long one) makes the alert stop soon after the burn does.
FAST_BURN = 14.4  # over 1h and 5m: incident severity critical
SLOW_BURN = 6.0  # over 6h and 30m: incident severity major
FAST_WINDOWS = ("1h", "5m")
SLOW_WINDOWS = ("6h", "30m")


@dataclass(frozen=True)
class WindowSli:
    valid: int
    good: int
    ratio: float | None  # good / valid; None without valid requests
    burn_rate: float | None  # (bad / valid) / (1 - objective); None without valid requests

    @property
    def bad(self) -> int:
        return self.valid - self.good


@dataclass(frozen=True)
class Sli:
    sli: str  # availability | latency
    objective: float
    windows: dict[str, WindowSli]  # every window of SLO_WINDOWS, in that order
    error_budget_remaining: float | None  # over 30d; None without valid requests
    burn: str | None  # "fast" (1h and 5m over 14.4x), "slow" (6h and 30m over 6x) or None

    def burn_rate(self, window: str) -> float | None:
        return self.windows[window].burn_rate


@dataclass(frozen=True)
class AgentSlo:
    agent: str
    enabled: bool
    availability: float  # objectives
    latency_ms: int
    latency_quantile: float
    slis: dict[str, Sli]  # "availability", "latency"
    # The 30-day error budget spent day by day: (UTC day, remaining after it) per SLI, oldest
    # first; each point is 1 - bad up to that day's end / (1 - objective) x the window's valid.
    budget_by_day: dict[str, list[tuple[date, float | None]]]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def burn_rate(*, valid: int, bad: int, objective: float) -> float | None:
    """(bad / valid) / (1 - objective): 1 spends the error budget exactly over the window."""
    return (bad / valid) / (1 - objective) if valid else None


def budget_remaining(*, valid: int, bad: int, objective: float) -> float | None:
    """The share of the window's error budget left: 1 - bad / ((1 - objective) x valid)."""
    return 1 - bad / ((1 - objective) * valid) if valid else None


def burn_state(rates: dict[str, float | None]) -> str | None:
    """``fast`` when both the 1h and the 5m burn rates exceed 14.4, else ``slow`` when both the
    6h and the 30m exceed 6, else None."""

    def over(windows: Iterable[str], limit: float) -> bool:
        return all((rates.get(w) or 0) > limit for w in windows)

    if over(FAST_WINDOWS, FAST_BURN):
        return "fast"
    if over(SLOW_WINDOWS, SLOW_BURN):
        return "slow"
    return None


def _first(step: int, points: int, now: datetime) -> datetime:
    last = int(now.timestamp()) // step * step
    return datetime.fromtimestamp(last - step * (points - 1), UTC)


_VALID = F("succeeded") + F("degraded") + F("failed")


def _window_sums(
    rows: Any, windows: dict[str, datetime], group: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Per ``group``: valid, good (succeeded) and slow counts over each window's rows."""
    aggregates: dict[str, Any] = {}
    for window, first in windows.items():
        since = Q(start__gte=first)
        aggregates[f"valid_{window}"] = Sum(_VALID, filter=since)
        aggregates[f"good_{window}"] = Sum("succeeded", filter=since)
        aggregates[f"slow_{window}"] = Sum("slow", filter=since)
    return list(rows.values(*group).annotate(**aggregates).order_by())


def slo_list(
    *, agents: frozenset[str] | None = None, now: datetime | None = None
) -> list[AgentSlo]:
    """Every configured agent's SLO (of ``agents`` only, when given), sorted by name: the
    objectives, each SLI over every window, the 30-day error budget remaining, the burn state
    and the budget spent day by day. Three queries."""
    at = (now or timezone.now()).astimezone(UTC)
    configured = Agent.objects.order_by("name")
    if agents is not None:
        configured = configured.filter(name__in=sorted(agents))
    objectives = list(
        configured.values_list(
            "name", "enabled", "slo_availability", "slo_latency_ms", "slo_latency_quantile"
        )
    )
    if not objectives:
        return []
    names = [row[0] for row in objectives]
    by_step: dict[int, dict[str, datetime]] = {}
    for window, (step, count) in SLO_WINDOWS.items():
        by_step.setdefault(step, {})[window] = _first(step, count, at)

    def rows(step: int) -> Any:
        first = min(by_step[step].values())
        return TrafficRollup.objects.filter(
            step_s=step, start__gte=first, start__lte=at, agent_name__in=names
        ).exclude(agent_name=ALL_AGENTS)

    sums: dict[str, dict[str, int]] = {name: {} for name in names}
    for row in _window_sums(rows(TrafficStep.MINUTE), by_step[TrafficStep.MINUTE], ("agent_name",)):
        sums[row.pop("agent_name")].update({k: v or 0 for k, v in row.items()})
    # The hour rows by agent and UTC day: the 24h and 30d sums add the days up, and the days
    # are the error-budget chart's points.
    days: dict[str, dict[date, tuple[int, int, int]]] = {name: {} for name in names}
    hour_windows = by_step[TrafficStep.HOUR]
    for row in _window_sums(
        rows(TrafficStep.HOUR).annotate(day=TruncDay("start", tzinfo=UTC)),
        hour_windows,
        ("agent_name", "day"),
    ):
        agent, day = row.pop("agent_name"), row.pop("day")
        into = sums[agent]
        for key, value in row.items():
            into[key] = into.get(key, 0) + (value or 0)
        day_key = day.date() if isinstance(day, datetime) else day
        days[agent][day_key] = (
            row[f"valid_{BUDGET_WINDOW}"] or 0,
            row[f"good_{BUDGET_WINDOW}"] or 0,
            row[f"slow_{BUDGET_WINDOW}"] or 0,
        )
    first_day = hour_windows[BUDGET_WINDOW].date()
    all_days = [first_day + timedelta(days=i) for i in range((at.date() - first_day).days + 1)]

    out = []
    for name, enabled, availability, latency_ms, quantile in objectives:
        totals = sums[name]
        slis: dict[str, Sli] = {}
        chart: dict[str, list[tuple[date, float | None]]] = {}
        for sli, objective in (("availability", availability), ("latency", quantile)):
            windows: dict[str, WindowSli] = {}
            for window in SLO_WINDOWS:
                valid = totals.get(f"valid_{window}", 0)
                if sli == "availability":
                    good = totals.get(f"good_{window}", 0)
                else:
                    good = valid - totals.get(f"slow_{window}", 0)
                windows[window] = WindowSli(
                    valid=valid,
                    good=good,
                    ratio=_ratio(good, valid),
                    burn_rate=burn_rate(valid=valid, bad=valid - good, objective=objective),
                )
            month = windows[BUDGET_WINDOW]
            slis[sli] = Sli(
                sli=sli,
                objective=objective,
                windows=windows,
                error_budget_remaining=budget_remaining(
                    valid=month.valid, bad=month.bad, objective=objective
                ),
                burn=burn_state({w: s.burn_rate for w, s in windows.items()}),
            )
            spent = 0
            points: list[tuple[date, float | None]] = []
            for day in all_days:
                valid, good, slow = days[name].get(day, (0, 0, 0))
                spent += (valid - good) if sli == "availability" else slow
                points.append(
                    (day, budget_remaining(valid=month.valid, bad=spent, objective=objective))
                )
            chart[sli] = points
        out.append(
            AgentSlo(
                agent=name,
                enabled=enabled,
                availability=availability,
                latency_ms=latency_ms,
                latency_quantile=quantile,
                slis=slis,
                budget_by_day=chart,
            )
        )
    return out
