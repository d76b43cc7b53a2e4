"""Budgets and per-agent stats endpoints (docs/INTERFACES.md §4)."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Literal

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja import Query, Router

from agents.access.auth import Principal
from agents.backends import state_for_jobs
from agents.doors.auth import ApiKeyAuth
from agents.engine import get_engine
from agents.runtime.state import BudgetWindow
from agents.schemas import ERRORS
from budgets.models import Budget
from budgets.schemas import (
    AgentStatsListOut,
    BudgetListOut,
    BudgetOut,
    BudgetPatchIn,
    BudgetRaiseIn,
)
from budgets.selectors import (
    STATS_COLUMNS,
    BudgetStatus,
    agent_stats_by_window,
    budget_call_floors,
    budget_get,
    budget_list,
    budget_spans,
    budget_statuses,
    stats_csv_value,
)
from budgets.services import budget_raise, budget_set_paused
from core.errors import ValidationFailed

router = Router(tags=["budgets"], auth=ApiKeyAuth())

_STATS_PARAMS = frozenset({"window", "format"})
StatsWindow = Literal["1h", "24h", "7d", "30d"]  # selectors.STATS_WINDOWS


def _principal(request: HttpRequest, scope: str) -> Principal:
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require(scope)
    return principal


def _actor(principal: Principal) -> str:
    return f"apikey:{principal.prefix}"


async def _statuses(budgets: list[Budget], now: datetime) -> list[BudgetStatus]:
    spans = budget_spans(budgets, now=now)
    windows: dict[str, BudgetWindow] = {}
    if spans:
        store = await state_for_jobs()
        windows = await store.budget_windows(tuple(span.key for span in spans))
    floors = budget_call_floors(budgets, get_engine().config)
    return await sync_to_async(budget_statuses)(spans=spans, usage=windows, now=now, floors=floors)


async def _one(budget_id: int, principal: Principal) -> dict[str, object]:
    budget = await sync_to_async(budget_get)(budget_id=budget_id, principal=principal)
    (status,) = await _statuses([budget], timezone.now())
    return status.as_dict()


@router.get("/budgets", response={200: BudgetListOut, **ERRORS})
async def budgets_list(request: HttpRequest) -> dict[str, object]:
    """Every budget visible to the key, in its current window: counters, state and forecast.
    A key limited to some agents sees those agents' budgets and its own key's."""
    principal = _principal(request, "read")
    budgets = await sync_to_async(budget_list)(principal=principal)
    statuses = await _statuses(budgets, timezone.now())
    return {"items": [status.as_dict() for status in statuses], "next": None}


@router.get("/budgets/{budget_id}", response={200: BudgetOut, **ERRORS})
async def budget_detail(request: HttpRequest, budget_id: int) -> dict[str, object]:
    return await _one(budget_id, _principal(request, "read"))


@router.patch("/budgets/{budget_id}", response={200: BudgetOut, **ERRORS})
async def budget_patch(request: HttpRequest, budget_id: int, payload: BudgetPatchIn) -> object:
    """Pause (``{"paused": true}``: every call under the budget is refused) or resume."""
    principal = _principal(request, "operate")
    await sync_to_async(budget_get)(budget_id=budget_id, principal=principal)
    await sync_to_async(budget_set_paused)(
        budget_id=budget_id, paused=payload.paused, actor=_actor(principal)
    )
    return await _one(budget_id, principal)


@router.post("/budgets/{budget_id}/raise", response={200: BudgetOut, **ERRORS})
async def budget_raise_temporarily(
    request: HttpRequest, budget_id: int, payload: BudgetRaiseIn
) -> object:
    """Raise the limit by ``amount_usd`` until the current window ends (raises in one window
    add up)."""
    principal = _principal(request, "operate")
    await sync_to_async(budget_get)(budget_id=budget_id, principal=principal)
    await sync_to_async(budget_raise)(
        budget_id=budget_id,
        amount_usd=payload.amount_usd,
        reason=payload.reason,
        actor=_actor(principal),
    )
    return await _one(budget_id, principal)


@router.get(
    "/stats/agents",
    response={200: AgentStatsListOut, **ERRORS},
    # ``format=csv`` answers the same 200 as text/csv.
    openapi_extra={"responses": {200: {"content": {"text/csv": {"schema": {"type": "string"}}}}}},
)
async def stats_agents(
    request: HttpRequest,
    window: StatsWindow = "24h",
    output: Literal["json", "csv"] = Query("json", alias="format"),
) -> object:
    """The per-agent table from the rollups: ``window`` = 1h, 24h (default), 7d or 30d (1h and
    24h trailing, from the minute and hour rollups; 7d and 30d from the daily ones);
    ``format=csv`` answers the same rows as CSV with a header row. A key limited to some
    agents sees only their rows."""
    principal = _principal(request, "read")
    unknown = sorted(set(request.GET) - _STATS_PARAMS)
    if unknown:
        raise ValidationFailed([f"{name}: unknown query parameter" for name in unknown])
    stats = await sync_to_async(agent_stats_by_window)(
        window=window,
        now=timezone.now(),
        agents=principal.agents or None,
    )
    if output == "json":
        return {
            "items": stats.items,
            "next": None,
            "window": stats.window,
            "since": stats.since,
            "until": stats.until,
        }
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(STATS_COLUMNS)
    for item in stats.items:
        writer.writerow([stats_csv_value(item[column]) for column in STATS_COLUMNS])
    response = HttpResponse(buffer.getvalue(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="agent-stats-{window}.csv"'
    return response
