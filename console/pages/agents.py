"""Console pages: ``/agents/`` (the per-agent table) and ``/agents/{name}/`` (one agent).

Both read rollups and selectors only: the table comes from
``budgets.selectors.agent_stats_by_window`` (the same function, and for the CSV the same bytes,
as ``GET /api/v1/stats/agents``), the sparklines and charts from ``budgets.series``, breakers,
in-flight calls and budget counters from the shared state (what the runtime enforces; the page
then follows ``bw:snapshot``). Actions are POSTs calling the API's services: the agent's config
goes through ``agents.services.agent_update`` (``PATCH /api/v1/agents/{name}``), breakers
through ``agents.services.breaker_command`` (``POST /api/v1/.../breaker``); each re-checks the
role and is audited by the service.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, get_args

import yaml
from asgiref.sync import sync_to_async
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.backends import on_state_sync
from agents.config.export import agent_export, export_yaml
from agents.config.live import agent_config as runtime_config
from agents.engine import get_engine
from agents.models import Agent, Execution, ModelDeployment
from agents.runtime.executor import DEFAULT_DEPLOYMENT_BREAKER
from agents.runtime.state import (
    BreakerAction,
    BreakerConfig,
    BreakerSnapshot,
    BudgetWindow,
    StateStore,
    agent_breaker_key,
    deployment_breaker_key,
)
from agents.services import agent_update, breaker_command
from budgets.models import Budget, BudgetScope
from budgets.models import BudgetWindow as BudgetPeriod
from budgets.selectors import (
    BudgetStatus,
    agent_stats_by_window,
    agent_stats_csv,
    budget_spans,
    budget_statuses,
    stats_csv_filename,
)
from budgets.series import WINDOWS, Series, traffic_series, traffic_series_by_agent, window_parse
from console.roles import has_role, role_required
from console.selectors import CatalogAgent, DashboardCatalog, dashboard_catalog
from core.errors import ValidationFailed
from incidents.models import Incident

DEFAULT_WINDOW = "24h"
BREAKER_ACTIONS: tuple[str, ...] = get_args(BreakerAction)
ACTION_LABELS = {
    "force_open": "Force open",
    "force_close": "Force close",
    "reset": "Reset",
    "disable": "Disable",
}
REASON_MAX = 1000  # as BreakerActionIn.reason
RECENT_EXECUTIONS = 20
RECENT_INCIDENTS = 10


# --- shared state --------------------------------------------------------------------------


@dataclass
class LiveState:
    """What the shared state says now; ``problem`` names the failure when it did not answer."""

    agents: dict[str, BreakerSnapshot] = field(default_factory=dict)
    deployments: dict[int, BreakerSnapshot] = field(default_factory=dict)
    in_flight: dict[int, int] = field(default_factory=dict)
    windows: dict[str, BudgetWindow] = field(default_factory=dict)
    problem: str | None = None


def live_state(
    *,
    agents: tuple[tuple[str, BreakerConfig], ...],
    deployments: tuple[int, ...],
    budget_keys: tuple[str, ...],
) -> LiveState:
    """Breakers, in-flight calls and budget counters, read from this (sync) view's thread with
    a client of its own (``on_state_sync``): embedded, the process's state; distributed, Redis."""

    async def read(store: StateStore) -> LiveState:
        live = LiveState()
        for name, config in agents:
            live.agents[name] = await store.breaker_snapshot(agent_breaker_key(name), config)
        for ident in deployments:
            live.deployments[ident] = await store.breaker_snapshot(
                deployment_breaker_key(ident), DEFAULT_DEPLOYMENT_BREAKER
            )
        if deployments:
            live.in_flight = await store.in_flight(deployments)
        if budget_keys:
            live.windows = await store.budget_windows(budget_keys)
        return live

    try:
        return on_state_sync(read)
    except Exception as exc:  # the page still renders, naming what it could not read
        return LiveState(problem=f"shared state unavailable ({type(exc).__name__}: {exc})")


def _daily_statuses(
    catalog: DashboardCatalog, live: LiveState, *, agents: set[str] | None = None
) -> list[BudgetStatus]:
    now = timezone.now()
    budgets = [
        budget
        for budget in catalog.budgets
        if budget.agent is not None and (agents is None or budget.agent.name in agents)
    ]
    spans = budget_spans(budgets, now=now)
    if live.problem is not None:
        return []
    return budget_statuses(spans=spans, usage=live.windows, now=now)


def _budget_keys(catalog: DashboardCatalog, agents: set[str] | None = None) -> tuple[str, ...]:
    budgets = [
        b
        for b in catalog.budgets
        if b.agent is not None and (agents is None or b.agent.name in agents)
    ]
    return tuple(span.key for span in budget_spans(budgets, now=timezone.now()))


def _series_json(series: Series) -> dict[str, Any]:
    return {
        "step_s": series.step_s,
        "at": [p.at for p in series.points],
        "requests": [p.requests for p in series.points],
        "errors": [p.degraded + p.failed for p in series.points],
        "fallbacks": [p.fallbacks for p in series.points],
        "p50_ms": [p.p50_ms for p in series.points],
        "p95_ms": [p.p95_ms for p in series.points],
        "cost_usd": [p.cost_usd for p in series.points],
    }


def _window(request: HttpRequest) -> str:
    """``?window=`` (default 24h), or ValidationFailed naming the bad value and the windows."""
    return window_parse(request.GET.get("window", DEFAULT_WINDOW))


# --- /agents/ ------------------------------------------------------------------------------


@require_GET
@role_required("viewer")
def agents_page(request: HttpRequest) -> HttpResponse:
    """The table: every agent (without traffic too: zeros and dashes), plus agents that ran
    in the window and no longer exist; a totals row; sparklines; live breaker and budget."""
    try:
        window = _window(request)
    except ValidationFailed as exc:
        return render(
            request,
            "console/agents.html",
            {"windows": list(WINDOWS), "window": None, "error": "; ".join(exc.errors)},
            status=400,
        )
    now = timezone.now()
    catalog = dashboard_catalog()
    stats = agent_stats_by_window(window=window, now=now)
    by_name = {item["agent"]: item for item in stats.items}
    known = {agent.name: agent for agent in catalog.agents}
    names = list(known) + sorted(name for name in by_name if name not in known)
    series = traffic_series_by_agent(window=window, agents=frozenset(names), now=now)
    live = live_state(
        agents=tuple((agent.name, agent.config.breaker) for agent in catalog.agents),
        deployments=(),
        budget_keys=_budget_keys(catalog),
    )
    daily = {
        status.target: status
        for status in _daily_statuses(catalog, live)
        if status.scope == "agent" and status.window == "daily"
    }
    rows = []
    for name in names:
        agent: CatalogAgent | None = known.get(name)
        budget = daily.get(name)
        breaker = live.agents.get(name)
        rows.append(
            {
                "name": name,
                "exists": agent is not None,
                "enabled": agent.enabled if agent is not None else False,
                "stats": by_name.get(name),
                "breaker": breaker.state.value if breaker is not None else None,
                "budget": budget,
                "budget_used": _used(budget),
            }
        )
    spent = sum((status.spent_usd for status in daily.values()), Decimal(0))
    limit = sum((status.limit_usd for status in daily.values()), Decimal(0))
    return render(
        request,
        "console/agents.html",
        {
            "windows": list(WINDOWS),
            "window": window,
            "stats": stats,
            "rows": rows,
            "total": stats.total if stats.items else None,
            "total_budget": {"spent": spent, "limit": limit, "used": _ratio(spent, limit)}
            if daily
            else None,
            "series": {name: _series_json(s) for name, s in series.items()},
            "problem": live.problem,
        },
    )


def _ratio(part: Decimal, whole: Decimal) -> float | None:
    return float(part / whole) if whole > 0 else None


def _used(status: BudgetStatus | None) -> float | None:
    return None if status is None else _ratio(status.spent_usd, status.limit_usd)


@require_GET
@role_required("viewer")
def agents_csv(request: HttpRequest) -> HttpResponse:
    """The API's CSV (``GET /api/v1/stats/agents?window=..&format=csv``), byte for byte."""
    try:
        window = _window(request)
    except ValidationFailed as exc:
        return HttpResponse(
            "; ".join(exc.errors) + "\n", status=400, content_type="text/plain; charset=utf-8"
        )
    stats = agent_stats_by_window(window=window, now=timezone.now())
    response = HttpResponse(agent_stats_csv(stats), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{stats_csv_filename(window)}"'
    return response


# --- /agents/{name}/ -----------------------------------------------------------------------


def _agent_or_404(name: str) -> Agent:
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        raise Http404(f"agent {name!r} does not exist")
    return agent


def _daily_limit(catalog: DashboardCatalog, name: str) -> Decimal | None:
    for budget in catalog.budgets:
        if budget.agent is not None and budget.agent.name == name and budget.window == "daily":
            return budget.limit_usd
    return None


def agent_yaml(agent: Agent, daily_budget_usd: Decimal | None) -> str:
    """The agent's item of ``manage.py export``, as YAML (a mapping of its fields)."""
    return export_yaml(agent_export(agent, daily_budget_usd))


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _deployments_of(catalog: DashboardCatalog, agent: CatalogAgent) -> list[dict[str, Any]]:
    order = {model: index for index, model in enumerate(agent.models)}
    rows = [row for row in catalog.deployments if row["model"] in order]
    return sorted(rows, key=lambda row: (order[row["model"]], row["id"]))


@require_GET
@role_required("viewer")
def agent_page(request: HttpRequest, name: str) -> HttpResponse:
    return _agent_render(request, name)


def _agent_render(
    request: HttpRequest,
    name: str,
    *,
    edit: dict[str, Any] | None = None,
    status: int = 200,
) -> HttpResponse:
    model = _agent_or_404(name)
    catalog = dashboard_catalog()
    entry = next(a for a in catalog.agents if a.name == name)
    deployments = _deployments_of(catalog, entry)
    ids = tuple(row["id"] for row in deployments)
    live = live_state(
        agents=((name, entry.config.breaker),),
        deployments=ids,
        budget_keys=_budget_keys(catalog, {name}),
    )
    budgets = _daily_statuses(catalog, live, agents={name})
    breaker = live.agents.get(name)
    now = timezone.now()
    window = DEFAULT_WINDOW
    series = traffic_series(window=window, agents=frozenset({name}), now=now)
    executions = list(
        Execution.objects.filter(agent_name=name)
        .order_by("-created_at", "-id")
        .only("id", "status", "model", "cost_usd", "latency_ms", "created_at", "fallback_used")[
            :RECENT_EXECUTIONS
        ]
    )
    incidents = list(
        Incident.objects.filter(agent_name=name)
        .order_by("-opened_at", "-id")
        .only("id", "title", "kind", "severity", "status", "opened_at")[:RECENT_INCIDENTS]
    )
    current = agent_yaml(model, _daily_limit(catalog, name))
    return render(
        request,
        "console/agent.html",
        {
            "agent": model,
            "models": entry.models,
            "yaml": current,
            "fingerprint": _fingerprint(current),
            "edit": edit,
            "breaker": breaker,
            "deployments": [
                row
                | {
                    "breaker": live.deployments.get(row["id"]),
                    "in_flight": live.in_flight.get(row["id"], 0 if live.problem is None else None),
                }
                for row in deployments
            ],
            "budgets": [(s, _used(s)) for s in budgets],
            "actions": [(action, ACTION_LABELS[action]) for action in BREAKER_ACTIONS],
            "series": {"window": window, **_series_json(series)},
            "executions": executions,
            "incidents": incidents,
            "problem": live.problem,
        },
        status=status,
    )


# --- the config edit (admins) --------------------------------------------------------------


def _replacement(current: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch (RFC 7396) that turns ``current`` into ``wanted``: a field left out of
    ``wanted`` is ``null`` (its default), as ``apply`` treats a field the file leaves out."""
    patch = dict(wanted)
    for key, value in current.items():
        if key not in wanted:
            patch[key] = None
        elif isinstance(value, Mapping) and isinstance(wanted[key], Mapping):
            patch[key] = _replacement(value, wanted[key])
    return patch


def _parse(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ValidationFailed([f"config: not valid YAML{where}: {problem}"]) from None
    if not isinstance(data, dict):
        raise ValidationFailed(["config: expected a mapping of the agent's fields (name: ...)"])
    return data


class _DryRun(Exception):
    pass


def _config_write(*, name: str, current: str, text: str, actor: str, save: bool) -> None:
    """Validates ``text`` exactly as ``PATCH /api/v1/agents/{name}`` does (agent_update:
    the schema, then apply's references); writes and audits only when ``save``."""
    wanted = _parse(text)
    patch = _replacement(_parse(current), wanted)
    try:
        with transaction.atomic():
            agent_update(name=name, patch=patch, actor=actor)
            if not save:
                raise _DryRun
    except _DryRun:
        pass


def _diff(before: str, after: str, name: str) -> list[tuple[str, str]]:
    """``(class, line)`` of the unified diff of the two YAML texts."""
    lines = difflib.unified_diff(
        before.splitlines(),
        after.splitlines(),
        fromfile=f"{name} (saved)",
        tofile=f"{name} (edited)",
        lineterm="",
    )
    out = []
    for line in lines:
        if line.startswith(("+++", "---", "@@")):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = ""
        out.append((kind, line))
    return out


@require_POST
@role_required("viewer")
def agent_config(request: HttpRequest, name: str) -> HttpResponse:
    """``step=review``: validate, show the diff; ``step=save``: validate, write, audit."""
    if not has_role(request.user, "admin"):
        raise PermissionDenied("changing an agent's config needs the admin role")
    model = _agent_or_404(name)
    text = request.POST.get("config", "").replace("\r\n", "\n")
    step = request.POST.get("step", "review")
    current = agent_yaml(model, _daily_budget(model))
    edit: dict[str, Any] = {"text": text, "errors": [], "diff": None}
    if step not in {"review", "save"}:
        edit["errors"] = [f"step: {step!r} is not one of review, save"]
        return _agent_render(request, name, edit=edit, status=400)
    if step == "save" and request.POST.get("fingerprint") != _fingerprint(current):
        edit["errors"] = ["config: the agent changed since you reviewed your edit; review it again"]
        edit["diff"] = _diff(current, text, name)
        return _agent_render(request, name, edit=edit, status=409)
    actor = f"user:{request.user.get_username()}"
    try:
        _config_write(name=name, current=current, text=text, actor=actor, save=step == "save")
    except ValidationFailed as exc:
        edit["errors"] = list(exc.errors)
        return _agent_render(request, name, edit=edit, status=422)
    if step == "review":
        edit["diff"] = _diff(current, text, name)
        return _agent_render(request, name, edit=edit)
    messages.success(request, f"Saved the config of agent {name}.")
    return HttpResponseRedirect(reverse("agent", args=[name]) + "#config")


def _daily_budget(agent: Agent) -> Decimal | None:
    """The agent's daily budget (its config's ``daily_budget_usd``). One query."""
    return (
        Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetPeriod.DAILY, agent=agent)
        .values_list("limit_usd", flat=True)
        .first()
    )


# --- breaker actions (operators) -----------------------------------------------------------


def _breaker_input(request: HttpRequest) -> tuple[BreakerAction, str]:
    action = request.POST.get("action", "")
    reason = request.POST.get("reason", "").strip()
    errors = []
    if action not in BREAKER_ACTIONS:
        errors.append(f"action: {action!r} is not one of {', '.join(BREAKER_ACTIONS)}")
    if not reason:
        errors.append("reason: say why (it is kept in the audit trail)")
    elif len(reason) > REASON_MAX:
        errors.append(f"reason: at most {REASON_MAX} characters")
    if errors:
        raise ValidationFailed(errors)
    return action, reason  # type: ignore[return-value]


async def _operator(request: HttpRequest) -> str:
    """The signed-in operator's actor name; PermissionDenied for anyone else (a viewer's
    forged POST), before anything is read or changed."""
    user = await request.auser()
    if not user.is_authenticated or not await sync_to_async(has_role)(user, "operator"):
        raise PermissionDenied("breaker actions need the operator role")
    return f"user:{user.get_username()}"


async def _command(
    request: HttpRequest, *, name: str, key: str, config: BreakerConfig, label: str
) -> HttpResponseBase:
    actor = await _operator(request)
    back = reverse("agent", args=[name]) + "#breakers"
    try:
        action, reason = _breaker_input(request)
    except ValidationFailed as exc:
        messages.error(request, f"{label}: nothing changed: {'; '.join(exc.errors)}")
        return HttpResponseRedirect(back)
    snapshot = await breaker_command(
        runtime=get_engine(), key=key, action=action, config=config, actor=actor, reason=reason
    )
    messages.success(
        request, f"{label}: {ACTION_LABELS[action]} done; the breaker is {snapshot.state.value}."
    )
    return HttpResponseRedirect(back)


def _breaker_config(name: str) -> BreakerConfig:
    return runtime_config(_agent_or_404(name)).breaker


@require_http_methods(["POST"])
async def agent_breaker(request: HttpRequest, name: str) -> HttpResponseBase:
    """Force open / force close / reset / disable the agent's breaker (operators)."""
    await _operator(request)
    config = await sync_to_async(_breaker_config)(name)
    return await _command(
        request,
        name=name,
        key=agent_breaker_key(name),
        config=config,
        label=f"agent {name}'s breaker",
    )


def _deployment_of(name: str, deployment_id: int) -> None:
    agent = _agent_or_404(name)
    entry = CatalogAgent(runtime_config(agent), agent.enabled)
    if not ModelDeployment.objects.filter(pk=deployment_id, name__in=entry.models).exists():
        raise Http404(f"deployment {deployment_id} is not one of agent {name!r}'s")


@require_http_methods(["POST"])
async def deployment_breaker(
    request: HttpRequest, name: str, deployment_id: int
) -> HttpResponseBase:
    """The same four actions on a deployment of the agent's models (operators). A deployment
    serves every agent using its model: the confirmation says so."""
    await _operator(request)
    await sync_to_async(_deployment_of)(name, deployment_id)
    return await _command(
        request,
        name=name,
        key=deployment_breaker_key(deployment_id),
        config=DEFAULT_DEPLOYMENT_BREAKER,
        label=f"deployment {deployment_id}'s breaker",
    )
