"""Console page: the overview ``/`` (docs/INTERFACES.md §4, "Console", "The overview's figures").

Two parts:

* **Now** (live): today's requests and success rate, the last minute's p95 latency, today's
  spend against the daily budget, unresolved incidents and open breakers. The server renders
  them from the same snapshot the live dashboard sends (:meth:`console.dashboard.Snapshot.message`
  on :func:`console.selectors.dashboard_figures`); ``static/js/overview.js`` then replaces them
  with every ``bw:snapshot`` (about every second) from ``WS /ws/dashboard/``.
* **Real results** for the chosen window (``?window=1h|24h|7d|30d``, default 24h; another
  value shows an error naming it and falls back to 24h): requests/day, availability, average
  and p95 latency, cost/day against the daily budget, fallbacks, and the charts, from the
  traffic rollups (:mod:`budgets.series`). That part is also served alone at
  ``/overview/results/?window=`` (htmx polls it every 30 s and after a reconnect; a bad window
  there is a 400).

The page reads rollups and the dashboard's selectors only, never raw executions for its charts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import render
from django.utils import timezone

from agents.backends import on_state_sync
from budgets.selectors import budget_spans
from budgets.series import WINDOWS, Series, overview_totals, traffic_series, window_parse
from console.dashboard import Live, Snapshot, live_read
from console.roles import role_required
from console.selectors import dashboard_catalog, dashboard_figures
from core.errors import ValidationFailed

DEFAULT_WINDOW = "24h"
POLL_S = 30  # the results part's refresh (the rollups behind it refresh every 15 s)
CLOSED = frozenset({"closed", "forced_closed"})  # every other breaker state refuses some calls
STEP_LABELS = {60: "minute", 3600: "hour", 86400: "day"}
TRAILING = timedelta(hours=1)  # the spend forecast's rate: the spend since the previous hour


def clock() -> datetime:
    """The page's "now" (tests put a fixed one here)."""
    return timezone.now()


# --- now (live) ----------------------------------------------------------------------------


def snapshot_message(now: datetime) -> dict[str, Any]:
    """The live dashboard's snapshot message (every agent), computed for this request."""
    catalog = dashboard_catalog()
    spans = budget_spans(catalog.budgets, now=now)
    problems: list[str] = []
    live: Live | None
    try:
        live = on_state_sync(
            lambda store: live_read(store, catalog, tuple(span.key for span in spans))
        )
    except Exception as exc:  # the shared state is down: say so, show the rest
        problems.append(f"shared state unavailable: {type(exc).__name__}: {exc}"[:300])
        live = None
    figures = dashboard_figures(
        now=now, spans=spans, usage=None if live is None else live.budget_usage
    )
    return Snapshot(
        seq=0,
        at=now.timestamp(),
        catalog=catalog,
        figures=figures,
        live=live,
        problems=problems,
    ).message(None)


@dataclass(frozen=True)
class BudgetRef:
    """What "the daily budget" means here: the global daily budget if there is one, else the
    sum of the agents' daily budgets (``source`` says which; None: no daily budget)."""

    source: str | None  # "global" | "agents" | None
    label: str
    limit_usd: float | None
    spent_usd: float | None
    forecast_usd: float | None


def budget_ref(message: Mapping[str, Any]) -> BudgetRef:
    """The daily budget the overview compares spend with (``overview.js`` does the same)."""
    glob = message.get("budget")
    if glob is not None:
        return BudgetRef(
            "global",
            "global daily budget",
            glob["limit_usd"],
            glob["spent_usd"],
            glob["forecast_usd"],
        )
    mine = [agent["budget"] for agent in message.get("agents", ()) if agent.get("budget")]
    if not mine:
        return BudgetRef(None, "no daily budget", None, None, None)
    n = len(mine)
    return BudgetRef(
        "agents",
        f"sum of {n} agent daily budget{'s' if n != 1 else ''}",
        round(sum(b["limit_usd"] for b in mine), 6),
        round(sum(b["spent_usd"] for b in mine), 6),
        round(sum(b["forecast_usd"] for b in mine), 6),
    )


def open_breakers(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Agents' and deployments' breakers that are not closed, each with the agent pages to go
    to (a deployment's: the agents that may call its model)."""
    found: list[dict[str, Any]] = []
    users: dict[int, list[str]] = {}
    for agent in message.get("agents", ()):
        for ident in agent.get("deployments") or ():
            users.setdefault(ident, []).append(agent["name"])
        breaker = agent.get("breaker")
        if breaker is not None and breaker["state"] not in CLOSED:
            found.append(
                {"kind": "agent", "name": agent["name"], "state": breaker["state"],
                 "agents": [agent["name"]]}
            )  # fmt: skip
    for deployment in message.get("deployments", ()):
        breaker = deployment.get("breaker")
        if breaker is not None and breaker["state"] not in CLOSED:
            found.append(
                {
                    "kind": "deployment",
                    "name": f"{deployment['model']} #{deployment['id']} ({deployment['provider']})",
                    "state": breaker["state"],
                    "agents": users.get(deployment["id"], []),
                }
            )
    return found


def live_figures(message: Mapping[str, Any]) -> dict[str, Any]:
    """The "Now" figures from a snapshot message; ``static/js/overview.js`` computes the same
    from each ``bw:snapshot``. A figure is None when its source did not answer."""
    totals = message.get("totals") or {}
    today = totals.get("today")
    minute = totals.get("last_minute")
    incidents = message.get("incidents")
    breakers_known = all(a.get("breaker") is not None for a in message.get("agents", ())) and all(
        d.get("breaker") is not None for d in message.get("deployments", ())
    )
    breakers = open_breakers(message)
    requests = today["requests"] if today else None
    return {
        "requests_total": requests,
        "success_rate": round(today["succeeded"] / requests, 4) if today and requests else None,
        "errors_today": today["errors"] if today else None,
        "p95_latency_ms": minute["p95_latency_ms"] if minute else None,
        "requests_last_minute": minute["requests"] if minute else None,
        "spend_today_usd": today["cost_usd"] if today else None,
        "budget": budget_ref(message),
        "open_incidents": None
        if incidents is None
        else incidents.get("open", 0) + incidents.get("acknowledged", 0),
        "acknowledged_incidents": None if incidents is None else incidents.get("acknowledged", 0),
        "latest_incident": None if incidents is None else incidents.get("latest"),
        "breakers_open": len(breakers) if breakers_known else None,
        "open_breakers": breakers,
        "running": totals.get("running"),
        "problems": list(message.get("problems", ())),
    }


# --- real results (the window) -------------------------------------------------------------


def _day_bounds(now: datetime) -> tuple[datetime, datetime]:
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


def spend_today(hourly: Series, now: datetime, limit_usd: float | None) -> dict[str, Any]:
    """Cumulative spend of the UTC day by hour (rollups) and its forecast to midnight UTC:
    ``spent + rate x time left``, the rate being the spend since the start of the previous hour
    (60 to 120 minutes; since midnight early in the day) per second."""
    if hourly.step_s != 3600:
        raise ValueError(f"spend_today needs an hourly series, not step {hourly.step_s}s")
    day_start, day_end = _day_bounds(now)
    at_now = now.timestamp()
    trailing_from = max(
        day_start.timestamp(), (int(at_now) // 3600) * 3600 - TRAILING.total_seconds()
    )
    xs, cumulative = [day_start.timestamp()], [0.0]
    total = recent = 0.0
    for point in hourly.points:
        if point.at < day_start.timestamp():
            continue
        total += point.cost_usd
        if point.at >= trailing_from:
            recent += point.cost_usd
        xs.append(min(point.at + hourly.step_s, at_now))
        cumulative.append(round(total, 6))
    elapsed = at_now - trailing_from
    rate = recent / elapsed if elapsed > 0 else 0.0
    forecast = round(total + rate * max(0.0, day_end.timestamp() - at_now), 6)
    return {
        "at": xs,
        "cumulative": cumulative,
        "now": at_now,
        "day_start": day_start.timestamp(),
        "day_end": day_end.timestamp(),
        "spent_usd": round(total, 6),
        "rate_usd_per_hour": round(rate * 3600, 6),
        "forecast_usd": forecast,
        "limit_usd": limit_usd,
    }


def chart_data(series: Series, spend: Mapping[str, Any]) -> dict[str, Any]:
    """The charts' data (``<div id="overview-data" data-json="...">``: htmx removes script
    elements, JSON islands included, from the content it swaps in when scripts are off)."""
    points = series.points
    return {
        "window": series.window,
        "step_s": series.step_s,
        "at": [p.at for p in points],
        "requests": [p.requests for p in points],
        "errors": [p.degraded + p.failed for p in points],
        "fallbacks": [p.fallbacks for p in points],
        "p50_ms": [p.p50_ms for p in points],
        "p95_ms": [p.p95_ms for p in points],
        "spend": dict(spend),
    }


def results(window: str, *, now: datetime, budget: BudgetRef) -> dict[str, Any]:
    """The window's figures and charts. Two queries (one when the window is 24h)."""
    totals = overview_totals(window=window, now=now)
    series = traffic_series(window=window, now=now)
    hourly = series if window == "24h" else traffic_series(window="24h", now=now)
    spend = spend_today(hourly, now, budget.limit_usd)
    return {
        "window": window,
        "step_label": STEP_LABELS[series.step_s],
        "totals": totals,
        "charts_json": json.dumps(chart_data(series, spend), separators=(",", ":")),
        "spend": spend,
        "budget": budget,
        "over_budget": budget.limit_usd is not None
        and totals["cost_per_day_usd"] > budget.limit_usd,
    }


# --- views ---------------------------------------------------------------------------------


def _window_of(request: HttpRequest) -> tuple[str, str | None]:
    """The window asked for and, for a bad one, the error naming it (the page shows 24h)."""
    value = request.GET.get("window", DEFAULT_WINDOW)
    try:
        return window_parse(value), None
    except ValidationFailed as exc:
        return DEFAULT_WINDOW, f"{'; '.join(exc.errors)}: showing {DEFAULT_WINDOW}."


@role_required("viewer")
def overview(request: HttpRequest) -> HttpResponse:
    window, window_error = _window_of(request)
    now = clock()
    message = snapshot_message(now)
    live = live_figures(message)
    context = {
        "window": window,
        "windows": list(WINDOWS),
        "window_error": window_error,
        "now_figures": live,
        "has_agents": bool(message["agents"]),
        "poll_s": POLL_S,
        **results(window, now=now, budget=live["budget"]),
    }
    return render(request, "console/overview.html", context, status=400 if window_error else 200)


@role_required("viewer")
def overview_results(request: HttpRequest) -> HttpResponse:
    """The "Real results" part alone (htmx: every 30 s and after a reconnect)."""
    try:
        window = window_parse(request.GET.get("window", DEFAULT_WINDOW))
    except ValidationFailed as exc:
        return HttpResponseBadRequest("; ".join(exc.errors), content_type="text/plain")
    now = clock()
    live = live_figures(snapshot_message(now))
    context = {
        "window": window,
        "poll_s": POLL_S,
        **results(window, now=now, budget=live["budget"]),
    }
    return render(request, "console/overview_results.html", context)
