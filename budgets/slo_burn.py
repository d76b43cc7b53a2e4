"""The SLO burn-rate incidents (job ``slo-burn-check``): a writing service over
:mod:`budgets.slos`.

Per agent and SLI, the SRE workbook's multiwindow, multi-burn-rate condition: the 1h and the 5m
burn rates both over 14.4 (2% of the 30-day error budget in an hour) open an ``slo_burn``
incident of severity critical; the 6h and the 30m both over 6 (5% in 6 hours) one of severity
major. One incident per ``slo:<agent>:<sli>`` at a time: a major one turns critical when the
fast condition comes (``incident_change``, so notifications see the escalation), and it
resolves once neither condition holds. Each opening, escalation and resolution has a timeline
entry with the figures (burn rates per window, valid and bad requests, budget remaining).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from budgets.slos import (
    FAST_BURN,
    FAST_WINDOWS,
    SLOW_BURN,
    SLOW_WINDOWS,
    AgentSlo,
    Sli,
    slo_list,
)
from incidents.models import Incident, IncidentStatus, Severity
from incidents.services import (
    incident_change,
    incident_event_add,
    incident_open,
    incident_resolve_by_key,
)

log = logging.getLogger(__name__)

KIND = "slo_burn"
_SEVERITY = {"fast": Severity.CRITICAL, "slow": Severity.MAJOR}


def slo_burn_key(agent: str, sli: str) -> str:
    return f"slo:{agent}:{sli}"


@dataclass(frozen=True)
class BurnCheck:
    agent: str
    sli: str
    burn: str | None  # fast | slow | None
    action: str  # quiet | open | opened | escalated | resolved


def _figures(slo: AgentSlo, sli: Sli) -> dict[str, Any]:
    return {
        "sli": sli.sli,
        "objective": sli.objective,
        "latency_ms": slo.latency_ms if sli.sli == "latency" else None,
        "burn_rates": {
            window: None if w.burn_rate is None else round(w.burn_rate, 3)
            for window, w in sli.windows.items()
        },
        "valid": {window: w.valid for window, w in sli.windows.items()},
        "bad": {window: w.bad for window, w in sli.windows.items()},
        "error_budget_remaining": None
        if sli.error_budget_remaining is None
        else round(sli.error_budget_remaining, 4),
        "fast_burn": FAST_BURN,
        "slow_burn": SLOW_BURN,
    }


def _rates(sli: Sli, windows: tuple[str, ...]) -> str:
    return ", ".join(f"{w} {sli.burn_rate(w) or 0:.1f}x" for w in windows)


def _describe(slo: AgentSlo, sli: Sli, burn: str) -> tuple[str, str]:
    what = "availability" if sli.sli == "availability" else f"latency (<= {slo.latency_ms} ms)"
    if burn == "fast":
        windows, limit = FAST_WINDOWS, FAST_BURN
    else:
        windows, limit = SLOW_WINDOWS, SLOW_BURN
    title = (
        f"SLO {burn} burn on {slo.agent}: {what} error budget burning at "
        f"{sli.burn_rate(windows[0]) or 0:.1f}x over {windows[0]}"
    )
    message = (
        f"{what} burn rates {_rates(sli, windows)} (both over {limit:g}x; objective "
        f"{sli.objective:.5g}); 30d error budget remaining "
        + (
            "n/a"
            if sli.error_budget_remaining is None
            else f"{sli.error_budget_remaining * 100:.1f}%"
        )
    )
    return title, message


def slo_burn_check(*, now: datetime | None = None) -> list[BurnCheck]:
    """Open, escalate or resolve the ``slo_burn`` incidents of every agent and SLI (see the
    module). Four queries when nothing changes (the agents, two rollup aggregates, the open
    burn incidents)."""
    slos = slo_list(now=now)
    open_now = {
        key: (pk, severity)
        for key, pk, severity in Incident.objects.filter(kind=KIND)
        .exclude(status=IncidentStatus.RESOLVED)
        .values_list("dedup_key", "pk", "severity")
    }
    checks: list[BurnCheck] = []
    seen: set[str] = set()
    for slo in slos:
        for sli in slo.slis.values():
            key = slo_burn_key(slo.agent, sli.sli)
            seen.add(key)
            checks.append(_check(slo, sli, key, open_now.get(key)))
    for key in sorted(set(open_now) - seen):  # the agent is gone: nothing burns any more
        incident_resolve_by_key(dedup_key=key, message="the agent no longer exists")
        agent, sli_name = key.split(":", 2)[1:]
        checks.append(BurnCheck(agent, sli_name, None, "resolved"))
    return checks


def _check(slo: AgentSlo, sli: Sli, key: str, existing: tuple[int, str] | None) -> BurnCheck:
    burn = sli.burn
    figures = _figures(slo, sli)
    if existing is None:
        if burn is None:
            return BurnCheck(slo.agent, sli.sli, None, "quiet")
        title, message = _describe(slo, sli, burn)
        incident_open(
            kind=KIND,
            dedup_key=key,
            title=title,
            message=message,
            severity=_SEVERITY[burn],
            agent_name=slo.agent,
            data=figures,
        )
        log.warning("SLO %s burn on %s (%s): %s", burn, slo.agent, sli.sli, message)
        return BurnCheck(slo.agent, sli.sli, burn, "opened")
    pk, severity = existing
    if burn is None:
        incident_resolve_by_key(
            dedup_key=key,
            message=f"{sli.sli} burn rates back under the thresholds: "
            f"{_rates(sli, FAST_WINDOWS)}; {_rates(sli, SLOW_WINDOWS)}",
            data=figures,
        )
        return BurnCheck(slo.agent, sli.sli, None, "resolved")
    if burn == "fast" and severity != Severity.CRITICAL:
        incident_change(
            incident_id=pk,
            changes={"severity": Severity.CRITICAL},
            allowed=frozenset(),
            actor="system",
        )
        incident = Incident.objects.get(pk=pk)
        incident_event_add(
            incident=incident, kind="escalated", message=_describe(slo, sli, burn)[1], data=figures
        )
        return BurnCheck(slo.agent, sli.sli, burn, "escalated")
    return BurnCheck(slo.agent, sli.sli, burn, "open")
