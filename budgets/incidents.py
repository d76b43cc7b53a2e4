"""Budget incidents, from the periodic budget observation (:func:`budgets.services.budgets_observe`,
every 15 s): ``budget_exhausted`` and ``budget_forecast``.

- ``budget:<id>:exhausted`` opens when the budget's current window can no longer admit a call
  (state ``exceeded``: what is left is 0 or less than the smallest worst-case call of the agents
  it covers, or than an amount it already refused); critical for the global budget, major for
  the others. It resolves when the window admits calls again with room to spare: not exceeded
  and at most ``RESOLVE_BELOW`` (95%) of the limit used. That happens when the window rolls
  over, the limit is raised, or reservations are given back; the margin keeps a budget that
  hovers at the boundary (reservations coming and going) from opening and resolving the
  incident every 15 seconds.
- ``budget:<id>:forecast`` opens when the window's forecast (spent plus the last hour's rate
  until the window ends) is over its limit, once the window has run ``FORECAST_MIN_ELAPSED``
  (a forecast from its first minutes extrapolates a handful of calls); major for the global
  budget, minor for the others. It resolves when the forecast drops under ``RESOLVE_BELOW`` of
  the limit (a raise, a slower rate, a new window).

A paused budget opens and resolves nothing (refusing everything is an operator's decision, not
a failure). A budget deleted with an incident open resolves it. While an incident stays open,
further observations add nothing to its timeline: the opening and the resolution carry the
figures (spent, reserved, limit, left, the smallest call, forecast, rate, window).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from budgets.selectors import BudgetStatus
from incidents.models import Incident, IncidentStatus, Severity
from incidents.services import incident_open, incident_resolve_by_key

log = logging.getLogger("breakwater.budgets")

EXHAUSTED, FORECAST = "budget_exhausted", "budget_forecast"
RESOLVE_BELOW = Decimal("0.95")
FORECAST_MIN_ELAPSED = timedelta(minutes=15)


def exhausted_key(budget_id: int) -> str:
    return f"budget:{budget_id}:exhausted"


def forecast_key(budget_id: int) -> str:
    return f"budget:{budget_id}:forecast"


@dataclass(frozen=True)
class BudgetIncidentChange:
    budget_id: int
    kind: str  # budget_exhausted | budget_forecast
    action: str  # opened | resolved


def _money(value: Decimal | None) -> str | None:
    return None if value is None else f"{value:.6f}".rstrip("0").rstrip(".")


def _figures(status: BudgetStatus) -> dict[str, Any]:
    used = status.spent_usd + status.reserved_usd
    return {
        "budget_id": status.id,
        "scope": status.scope,
        "target": status.target,
        "window": status.window,
        "window_id": status.window_id,
        "window_ends_at": status.window_ends_at.isoformat(),
        "limit_usd": _money(status.limit_usd),
        "base_limit_usd": _money(status.base_limit_usd),
        "spent_usd": _money(status.spent_usd),
        "reserved_usd": _money(status.reserved_usd),
        "left_usd": _money(status.limit_usd - used),
        "smallest_call_usd": _money(status.floor_usd),
        "refused": status.refused,
        "forecast_usd": _money(status.forecast_usd),
        "forecast_ratio": status.predictability,
        "rate_usd_per_hour": _money(status.rate_usd_per_hour),
        "state": status.state,
    }


def _subject(status: BudgetStatus) -> str:
    what = "global budget" if status.scope == "global" else f"{status.scope} budget {status.target}"
    return f"{status.window} {what}"


def _agent(status: BudgetStatus) -> str:
    return status.target if status.scope == "agent" else ""


def _used(status: BudgetStatus) -> Decimal:
    return status.spent_usd + status.reserved_usd


def _exhausted_text(status: BudgetStatus) -> str:
    used, limit = _used(status), status.limit_usd
    text = (
        f"${used:.2f} of ${limit:.2f} used (${status.spent_usd:.2f} spent, "
        f"${status.reserved_usd:.2f} reserved) in window {status.window_id}"
    )
    if used < limit and status.floor_usd is not None:
        text += (
            f"; the ${limit - used:.4f} left cannot admit the smallest call "
            f"(${status.floor_usd:.4f})"
        )
    return text + f"; refused {status.refused} call(s) so far"


def _forecast_text(status: BudgetStatus) -> str:
    return (
        f"forecast ${status.forecast_usd:.2f} against a limit of ${status.limit_usd:.2f} "
        f"({status.predictability}x) at ${status.rate_usd_per_hour:.2f}/h; "
        f"${status.spent_usd:.2f} spent in window {status.window_id}"
    )


def budget_incidents_sync(
    statuses: Iterable[BudgetStatus], *, now: datetime
) -> list[BudgetIncidentChange]:
    """Open and resolve the budgets' incidents from their observed states. One query when
    nothing changes (the open budget incidents); each change is one incident write."""
    statuses = list(statuses)
    open_keys = set(
        Incident.objects.filter(kind__in=(EXHAUSTED, FORECAST))
        .exclude(status=IncidentStatus.RESOLVED)
        .values_list("dedup_key", flat=True)
    )
    changes: list[BudgetIncidentChange] = []
    seen: set[str] = set()
    for status in statuses:
        keys = exhausted_key(status.id), forecast_key(status.id)
        seen.update(keys)
        if status.paused:
            continue
        figures = _figures(status)
        _exhausted(status, figures, keys[0] in open_keys, changes)
        _forecast(status, figures, keys[1] in open_keys, now, changes)
    for key in sorted(open_keys - seen):  # the budget is gone
        _, budget_id, which = key.split(":", 2)
        if incident_resolve_by_key(dedup_key=key, message="the budget was deleted"):
            kind = EXHAUSTED if which == "exhausted" else FORECAST
            changes.append(BudgetIncidentChange(int(budget_id), kind, "resolved"))
    return changes


def _exhausted(
    status: BudgetStatus,
    figures: dict[str, Any],
    is_open: bool,
    changes: list[BudgetIncidentChange],
) -> None:
    key = exhausted_key(status.id)
    if status.state == "exceeded":
        if is_open:
            return
        critical = status.scope == "global"
        incident_open(
            kind=EXHAUSTED,
            dedup_key=key,
            title=f"Budget exhausted: {_subject(status)} (${status.limit_usd:.2f})",
            message=_exhausted_text(status),
            severity=Severity.CRITICAL if critical else Severity.MAJOR,
            agent_name=_agent(status),
            data=figures,
        )
        log.warning("budget %s exhausted: %s", status.id, _exhausted_text(status))
        changes.append(BudgetIncidentChange(status.id, EXHAUSTED, "opened"))
    elif is_open and _used(status) <= status.limit_usd * RESOLVE_BELOW:
        incident_resolve_by_key(
            dedup_key=key,
            message=f"admitting calls again: ${_used(status):.2f} of ${status.limit_usd:.2f} used "
            f"in window {status.window_id}",
            data=figures,
        )
        changes.append(BudgetIncidentChange(status.id, EXHAUSTED, "resolved"))


def _forecast(
    status: BudgetStatus,
    figures: dict[str, Any],
    is_open: bool,
    now: datetime,
    changes: list[BudgetIncidentChange],
) -> None:
    key = forecast_key(status.id)
    limit = status.limit_usd
    if status.forecast_usd > limit:
        if is_open or now - status.window_starts_at < FORECAST_MIN_ELAPSED:
            return
        incident_open(
            kind=FORECAST,
            dedup_key=key,
            title=f"Budget forecast over its limit: {_subject(status)} "
            f"(${status.forecast_usd:.2f} of ${limit:.2f})",
            message=_forecast_text(status),
            severity=Severity.MAJOR if status.scope == "global" else Severity.MINOR,
            agent_name=_agent(status),
            data=figures,
        )
        changes.append(BudgetIncidentChange(status.id, FORECAST, "opened"))
    elif is_open and status.forecast_usd <= limit * RESOLVE_BELOW:
        incident_resolve_by_key(
            dedup_key=key, message=f"back under the limit: {_forecast_text(status)}", data=figures
        )
        changes.append(BudgetIncidentChange(status.id, FORECAST, "resolved"))
