"""``/slos/``: every agent's SLOs (docs/OPERATIONS.md, "SLOs"): each SLI over 1h, 6h, 24h and 30d,
the 30-day error budget remaining, the burn rates (coloured by the multiwindow alert
conditions: fast burn over 14.4x on 1h and 5m, slow burn over 6x on 6h and 30m) and a chart of
the error budget spent down over the 30 days.

One call of ``budgets.slos.slo_list``: three queries on the traffic rollups, whatever the
history. The chart's data rides in ``#slo-data``'s ``data-json`` attribute (no inline script:
the CSP), drawn by ``static/js/slos.js`` with the vendored uPlot.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from budgets.slos import FAST_BURN, FAST_WINDOWS, SLOW_BURN, SLOW_WINDOWS, AgentSlo, Sli, slo_list
from console.roles import role_required

SHOWN_WINDOWS = ("1h", "6h", "24h", "30d")  # the SLI columns
BURN_WINDOWS = ("5m", "30m", "1h", "6h", "24h", "30d")  # the burn-rate columns
DASH = "\u2013"
clock = timezone.now  # the tests fix it
BUDGET_LOW = 0.25  # a budget remaining under a quarter shows as a warning


def _burn_text(rate: float | None) -> str:
    if rate is None:
        return DASH
    return f"{rate:.1f}\u00d7" if rate < 100 else f"{rate:,.0f}\u00d7"


def _burn_class(window: str, rate: float | None) -> str:
    """``fast`` on a window of the fast pair over 14.4x, ``slow`` on one of the slow pair over
    6x, ``over`` anywhere over 1x (the budget would not last the 30 days), else ``""``."""
    if rate is None:
        return ""
    if window in FAST_WINDOWS and rate > FAST_BURN:
        return "fast"
    if window in SLOW_WINDOWS and rate > SLOW_BURN:
        return "slow"
    return "over" if rate > 1 else ""


def _state(sli: Sli) -> str:
    if sli.burn is not None:
        return f"{sli.burn}-burn"
    if sli.windows["30d"].valid == 0:
        return "no-data"
    remaining = sli.error_budget_remaining
    return "exhausted" if remaining is not None and remaining <= 0 else "ok"


def _budget_class(remaining: float | None) -> str:
    if remaining is None:
        return ""
    if remaining <= 0:
        return "bad"
    return "warn" if remaining < BUDGET_LOW else "ok"


STATE_LABELS = {
    "fast-burn": "fast burn",
    "slow-burn": "slow burn",
    "no-data": "no data",
    "exhausted": "budget spent",
    "ok": "ok",
}


def _threshold(latency_ms: int) -> str:
    """A latency threshold as the table shows it: ``500 ms``, ``2 s``, ``1.5 s``."""
    return f"{latency_ms}\u00a0ms" if latency_ms < 1000 else f"{latency_ms / 1000:g}\u00a0s"


def _sli_row(slo: AgentSlo, sli: Sli) -> dict[str, Any]:
    state = _state(sli)
    percent = f"{sli.objective * 100:g}%"
    if sli.sli == "availability":
        objective, short = f"{percent} available", percent
    else:
        objective = f"{percent} within {slo.latency_ms:,} ms"
        short = f"{percent} \u2264\u00a0{_threshold(slo.latency_ms)}"  # wraps before the \u2264
    return {
        "sli": sli.sli,
        "objective": objective,  # in full, the short form's title
        "objective_short": short,  # the table's column: every column fits at 1280 px
        "objective_ratio": sli.objective,
        "windows": [
            {"window": w, "ratio": sli.windows[w].ratio, "valid": sli.windows[w].valid}
            for w in SHOWN_WINDOWS
        ],
        "budget": sli.error_budget_remaining,
        "budget_class": _budget_class(sli.error_budget_remaining),
        "burns": [
            {
                "window": w,
                "rate": sli.windows[w].burn_rate,
                "text": _burn_text(sli.windows[w].burn_rate),
                "class": _burn_class(w, sli.windows[w].burn_rate),
            }
            for w in BURN_WINDOWS
        ],
        "state": state,
        "state_label": STATE_LABELS[state],
    }


def chart_data(slos: list[AgentSlo]) -> dict[str, Any]:
    """The error-budget chart: per SLI, each agent's budget remaining after each UTC day."""
    days = [day for day, _ in slos[0].budget_by_day["availability"]] if slos else []
    return {
        "at": [datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() for d in days],
        "agents": [slo.agent for slo in slos],
        "availability": [
            [None if v is None else round(v, 5) for _, v in slo.budget_by_day["availability"]]
            for slo in slos
        ],
        "latency": [
            [None if v is None else round(v, 5) for _, v in slo.budget_by_day["latency"]]
            for slo in slos
        ],
    }


@role_required("viewer")
def slos_page(request: HttpRequest) -> HttpResponse:
    slos = slo_list(now=clock())
    agents: list[dict[str, Any]] = [
        {
            "name": slo.agent,
            "enabled": slo.enabled,
            "rows": [_sli_row(slo, slo.slis["availability"]), _sli_row(slo, slo.slis["latency"])],
        }
        for slo in slos
    ]
    burning = sum(row["state"] in ("fast-burn", "slow-burn") for a in agents for row in a["rows"])
    return render(
        request,
        "console/slos.html",
        {
            "agents": agents,
            "burning": burning,
            "shown_windows": SHOWN_WINDOWS,
            "burn_windows": BURN_WINDOWS,
            "fast_burn": FAST_BURN,
            "slow_burn": SLOW_BURN,
            "chart_json": json.dumps(chart_data(slos), separators=(",", ":")),
        },
    )
