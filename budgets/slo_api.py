"""``GET /api/v1/slos``: every agent's SLO, SLIs, error budget and burn rates
(docs/INTERFACES.md §4; definitions in docs/OPERATIONS.md, "SLOs")."""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils import timezone
from ninja import Router

from agents.access.auth import Principal
from agents.doors.auth import ApiKeyAuth
from agents.schemas import ERRORS
from budgets.slo_schemas import SloListOut
from budgets.slos import AgentSlo, Sli, slo_list
from core.errors import ValidationFailed

router = Router(tags=["slos"], auth=ApiKeyAuth())


def _round(value: float | None, places: int = 6) -> float | None:
    return None if value is None else round(value, places)


def _sli_out(sli: Sli) -> dict[str, Any]:
    return {
        "objective": sli.objective,
        "windows": {
            window: {
                "valid": w.valid,
                "good": w.good,
                "bad": w.bad,
                "sli": _round(w.ratio),
                "burn_rate": _round(w.burn_rate, 4),
            }
            for window, w in sli.windows.items()
        },
        "error_budget_remaining": _round(sli.error_budget_remaining),
        "burn": sli.burn,
    }


def slo_out(slo: AgentSlo) -> dict[str, Any]:
    """An agent's item of ``GET /api/v1/slos`` (``SloOut``)."""
    latency_by_day = dict(slo.budget_by_day["latency"])
    return {
        "agent": slo.agent,
        "enabled": slo.enabled,
        "objective": {
            "availability": slo.availability,
            "latency_ms": slo.latency_ms,
            "latency_quantile": slo.latency_quantile,
        },
        "availability": _sli_out(slo.slis["availability"]),
        "latency": _sli_out(slo.slis["latency"]),
        "error_budget_by_day": [
            {
                "day": day,
                "availability": _round(remaining),
                "latency": _round(latency_by_day.get(day)),
            }
            for day, remaining in slo.budget_by_day["availability"]
        ],
    }


@router.get("/slos", response={200: SloListOut, **ERRORS})
async def slos_list(request: HttpRequest) -> dict[str, object]:
    """Every agent's SLO (objectives from its config's ``slo``), each SLI over 5m, 30m, 1h, 6h,
    24h and 30d, the 30-day error budget remaining and the burn rates, from the traffic rollups.
    A key limited to some agents sees only those."""
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require("read")
    if request.GET:
        raise ValidationFailed([f"{name}: unknown query parameter" for name in sorted(request.GET)])
    slos = await sync_to_async(slo_list)(agents=principal.agents or None, now=timezone.now())
    return {"items": [slo_out(slo) for slo in slos], "next": None}
