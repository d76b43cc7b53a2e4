"""Reads for agents, deployments, executions and keys."""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q

from agents.models import Agent, ApiKey, Execution, ModelDeployment
from agents.runtime.state import BreakerConfig
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.errors import ValidationFailed


@dataclass(frozen=True)
class AgentRow:
    name: str
    description: str
    model: str
    fallback_models: list[str]
    deployments: int
    timeout_s: float
    daily_budget_usd: Decimal | None
    enabled: bool


def agent_list_with_models() -> list[AgentRow]:
    """Agents with their deployment counts and daily budgets, in three queries."""
    deployments: dict[str, int] = {}
    for name in ModelDeployment.objects.filter(enabled=True).values_list("name", flat=True):
        deployments[name] = deployments.get(name, 0) + 1
    budgets = dict(
        Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY).values_list(
            "agent_id", "limit_usd"
        )
    )
    return [
        AgentRow(
            name=agent.name,
            description=agent.description,
            model=agent.model,
            fallback_models=list(agent.fallback_models),
            deployments=deployments.get(agent.model, 0),
            timeout_s=agent.timeout_s,
            daily_budget_usd=budgets.get(agent.pk),
            enabled=agent.enabled,
        )
        for agent in Agent.objects.order_by("name")
    ]


# --- cursors ---------------------------------------------------------------------------------


def cursor_encode(*parts: str) -> str:
    """An opaque keyset cursor: base64url of the sort key of the last item on the page."""
    raw = "\x1f".join(parts).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def cursor_decode(cursor: str, parts: int, field: str = "after") -> list[str]:
    """The sort key in ``cursor``, or :class:`ValidationFailed` (422) if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    values = raw.split("\x1f")
    if len(values) != parts or not all(values):
        raise ValidationFailed([f"{field}: invalid cursor"])
    return values


def _time_cursor(cursor: str, field: str = "after") -> tuple[datetime, str]:
    when, ident = cursor_decode(cursor, 2, field)
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        raise ValidationFailed([f"{field}: invalid cursor"]) from None
    if at.tzinfo is None:
        raise ValidationFailed([f"{field}: invalid cursor"])
    return at, ident


# --- agents ----------------------------------------------------------------------------------


def _money(value: Decimal | None) -> float | None:
    return None if value is None else float(value)


def agent_spec_dict(agent: Agent, daily_budget_usd: Decimal | None) -> dict[str, Any]:
    """Every config-as-code field of ``agent`` (the ``AgentSpec`` document, defaults included)."""
    return {
        "name": agent.name,
        "description": agent.description,
        "model": agent.model,
        "fallback_models": list(agent.fallback_models),
        "cheap_model": agent.cheap_model or None,
        "system_prompt": agent.system_prompt,
        "timeout_s": agent.timeout_s,
        "attempt_timeout_s": agent.attempt_timeout_s,
        "max_retries": agent.max_retries,
        "max_tokens": agent.max_tokens,
        "breaker": {
            "failure_threshold": agent.breaker_failure_threshold,
            "recovery_timeout_s": agent.breaker_recovery_timeout_s,
            "half_open_max_calls": agent.breaker_half_open_max_calls,
            "window_size": agent.breaker_window_size,
            "minimum_calls": agent.breaker_minimum_calls,
            "failure_rate_threshold": agent.breaker_failure_rate,
            "slow_call_s": agent.breaker_slow_call_s,
            "slow_call_rate_threshold": agent.breaker_slow_call_rate,
        },
        "rate_limit": {"rpm": agent.rate_limit_rpm, "tpm": agent.rate_limit_tpm},
        "cache_ttl_s": agent.cache_ttl_s,
        "daily_budget_usd": daily_budget_usd,
        "tools": [dict(tool) for tool in agent.tools],
        "fallback_messages": dict(agent.fallback_messages),
        "slo": {
            "availability": agent.slo_availability,
            "latency_ms": agent.slo_latency_ms,
            "latency_quantile": agent.slo_latency_quantile,
        },
        "max_concurrency": agent.max_concurrency,
        "queue": agent.queue,
        "enabled": agent.enabled,
    }


def _agent_out(agent: Agent, daily_budget_usd: Decimal | None) -> dict[str, Any]:
    out = agent_spec_dict(agent, daily_budget_usd)
    out["daily_budget_usd"] = _money(daily_budget_usd)
    out["created_at"] = agent.created_at
    out["updated_at"] = agent.updated_at
    return out


def _daily_budgets(agent_ids: list[int]) -> dict[int, Decimal]:
    return dict(
        Budget.objects.filter(
            scope=BudgetScope.AGENT, window=BudgetWindow.DAILY, agent_id__in=agent_ids
        ).values_list("agent_id", "limit_usd")
    )


def agent_detail(*, name: str) -> dict[str, Any] | None:
    """The agent as the API shows it (``AgentOut``), or None."""
    agent = Agent.objects.filter(name=name).first()
    if agent is None:
        return None
    return _agent_out(agent, _daily_budgets([agent.pk]).get(agent.pk))


def agent_page(*, allowed: frozenset[str], after: str | None, limit: int) -> dict[str, Any]:
    """Agents by name, ``limit`` at a time; ``allowed`` non-empty restricts to those names.
    Two queries."""
    agents = Agent.objects.order_by("name")
    if allowed:
        agents = agents.filter(name__in=allowed)
    if after is not None:
        agents = agents.filter(name__gt=cursor_decode(after, 1)[0])
    rows = list(agents[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    budgets = _daily_budgets([agent.pk for agent in rows])
    return {
        "items": [_agent_out(agent, budgets.get(agent.pk)) for agent in rows],
        "next": cursor_encode(rows[-1].name) if more else None,
    }


def agent_breaker_config(*, name: str) -> BreakerConfig | None:
    """The agent's breaker configuration as the runtime uses it (disabled agents included)."""
    from agents.config.live import agent_config

    agent = Agent.objects.filter(name=name).first()
    return None if agent is None else agent_config(agent).breaker


# --- deployments -----------------------------------------------------------------------------


def deployment_rows() -> list[dict[str, Any]]:
    """Every deployment (disabled ones too), without live state. One query."""
    return [
        {
            "id": d.pk,
            "model": d.name,
            "provider": d.provider.name,
            "upstream_model": d.upstream_model,
            "input_usd_per_mtok": _money(d.input_usd_per_mtok),
            "output_usd_per_mtok": _money(d.output_usd_per_mtok),
            "cached_input_usd_per_mtok": _money(d.cached_input_usd_per_mtok),
            "max_concurrency": d.max_concurrency,
            "weight": d.weight,
            "enabled": d.enabled,
        }
        for d in ModelDeployment.objects.select_related("provider").order_by("name", "id")
    ]


def deployment_exists(*, deployment_id: int) -> bool:
    return ModelDeployment.objects.filter(pk=deployment_id).exists()


# --- executions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionAccess:
    """Which executions an API key may read (the rule is in :mod:`agents.api`)."""

    key_id: int
    readable_agents: frozenset[str] | None  # None: every agent; empty: none but its own

    def q(self) -> Q:
        own = Q(api_key_id=self.key_id)
        if self.readable_agents is None:
            return Q()
        if not self.readable_agents:
            return own
        return own | Q(agent_name__in=self.readable_agents)


def _epoch(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def execution_out(row: Execution) -> dict[str, Any]:
    """The execution result of docs/INTERFACES.md §4, for a stored execution."""
    return {
        "execution_id": str(row.id),
        "agent": row.agent_name,
        "status": row.status,
        "output": row.output,
        "model": row.model or None,
        "deployment": row.deployment_id,
        "attempts": row.attempts,
        "fallback_used": row.fallback_used,
        "fallback_reason": row.fallback_reason,
        "cached": row.cached,
        "usage": {"input_tokens": row.input_tokens, "output_tokens": row.output_tokens},
        "cost_usd": float(row.cost_usd),
        "latency_ms": None if row.latency_ms is None else float(row.latency_ms),
        "created_at": row.created_at.timestamp(),
        "started_at": _epoch(row.started_at),
        "model_choice": row.model_choice,
        "finished_at": _epoch(row.finished_at),
        "session_id": row.session_id or None,
        "error": row.error,
        "steps": list(row.steps or []),
    }


def execution_detail(*, execution_id: str, access: ExecutionAccess) -> dict[str, Any] | None:
    """One execution the key may read (with its input and metadata), or None."""
    try:
        pk = uuid.UUID(execution_id)
    except ValueError:
        return None
    row = Execution.objects.filter(access.q(), pk=pk).first()
    if row is None:
        return None
    return execution_out(row) | {"input": list(row.input or []), "metadata": dict(row.metadata)}


_LIST_FIELDS = [
    f.name for f in Execution._meta.concrete_fields if f.name not in {"input", "metadata"}
]


def execution_page(
    *,
    access: ExecutionAccess,
    agent: str | None,
    status: str | None,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    """Newest first, keyset-paginated on ``(created_at, id)``: one query per page whatever its
    depth, served by the ``execution_*_time`` indexes."""
    rows = Execution.objects.filter(access.q()).only(*_LIST_FIELDS).order_by("-created_at", "-id")
    if agent is not None:
        rows = rows.filter(agent_name=agent)
    if status is not None:
        rows = rows.filter(status=status)
    if after is not None:
        rows = _keyset_after(rows, after, "after")  # (created_at, id) < the cursor's
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [execution_out(row) for row in page],
        "next": _row_cursor(page[-1]) if more else None,
    }


@dataclass(frozen=True)
class ExecutionFilters:
    """What the console's explorer narrows executions to (every field optional).

    :func:`execution_filters_check` allows an agent plus at most one of status, fallback
    reason, model and cached (and an agent never with a model): each allowed combination seeks
    one ``execution_*_time`` index in time order, so a page costs the same whatever the history
    holds or how little of it matches (docs/DECISIONS.md)."""

    agent: str | None = None
    status: str | None = None
    fallback_reason: str | None = None
    model: str | None = None
    cached: bool | None = None
    since: datetime | None = None  # created_at >= since
    until: datetime | None = None  # created_at < until

    def q(self) -> Q:
        q = Q()
        if self.agent is not None:
            q &= Q(agent_name=self.agent)
        if self.status is not None:
            q &= Q(status=self.status)
        if self.fallback_reason is not None:
            q &= Q(fallback_reason=self.fallback_reason)
        if self.model is not None:
            q &= Q(model=self.model)
        if self.cached is True:
            q &= Q(cached=True)
        elif self.cached is False:
            q &= Q(cached=False)
        if self.since is not None:
            q &= Q(created_at__gte=self.since)
        if self.until is not None:
            q &= Q(created_at__lt=self.until)
        return q


def execution_filters_check(filters: ExecutionFilters) -> list[str]:
    """Why ``filters`` cannot be served by an index (empty: it can)."""
    errors = []
    narrowing = [
        name
        for name, value in (
            ("status", filters.status),
            ("fallback reason", filters.fallback_reason),
            ("model", filters.model),
            ("cached", filters.cached),
        )
        if value is not None
    ]
    if len(narrowing) > 1:
        errors.append(
            f"choose one of {' and '.join(narrowing)}: the explorer combines an agent with one "
            "of status, fallback reason, model or cached"
        )
    elif filters.agent is not None and filters.model is not None:
        errors.append(
            "choose an agent or a model, not both: an agent's model is in its config; filter by "
            "model alone to see every agent that used it"
        )
    if filters.since is not None and filters.until is not None and filters.since >= filters.until:
        errors.append("to: must be later than from")
    return errors


def _keyset_after(rows: Any, cursor: str, field: str) -> Any:
    """Rows strictly older than the cursor's ``(created_at, id)``, with a plain range bound the
    index can seek on."""
    at, ident = _time_cursor(cursor, field)
    try:
        last = uuid.UUID(ident)
    except ValueError:
        raise ValidationFailed([f"{field}: invalid cursor"]) from None
    return rows.filter(created_at__lte=at).filter(
        Q(created_at__lt=at) | Q(created_at=at, id__lt=last)
    )


def _keyset_before(rows: Any, cursor: str, field: str) -> Any:
    at, ident = _time_cursor(cursor, field)
    try:
        first = uuid.UUID(ident)
    except ValueError:
        raise ValidationFailed([f"{field}: invalid cursor"]) from None
    return rows.filter(created_at__gte=at).filter(
        Q(created_at__gt=at) | Q(created_at=at, id__gt=first)
    )


def _row_cursor(row: Execution) -> str:
    return cursor_encode(row.created_at.isoformat(), str(row.id))


def execution_explore(
    *,
    filters: ExecutionFilters,
    after: str | None = None,
    before: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of executions for the console, newest first, keyset-paginated both ways on
    ``(created_at, id)``: ``after`` (older than that cursor) or ``before`` (newer). One query
    whatever the page's depth. ``older``/``newer``: cursors for the pages beside, or None.
    Rows carry no input, output, metadata or steps."""
    errors = execution_filters_check(filters)
    if after is not None and before is not None:
        errors.append("give after or before, not both")
    if errors:
        raise ValidationFailed(errors)
    rows = Execution.objects.filter(filters.q()).defer(
        "input", "output", "metadata", "steps", "error"
    )
    if before is not None:
        page = list(
            _keyset_before(rows, before, "before").order_by("created_at", "id")[: limit + 1]
        )
        more = len(page) > limit
        page = page[:limit][::-1]
        return {
            "items": page,
            "newer": _row_cursor(page[0]) if more and page else None,
            "older": _row_cursor(page[-1]) if page else None,
        }
    ordered = rows.order_by("-created_at", "-id")
    if after is not None:
        ordered = _keyset_after(ordered, after, "after")
    page = list(ordered[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": page,
        "newer": _row_cursor(page[0]) if after is not None and page else None,
        "older": _row_cursor(page[-1]) if more else None,
    }


def execution_filter_choices() -> dict[str, list[str]]:
    """The explorer's choices: agent names and model names (configured; two small queries)."""
    return {
        "agents": list(Agent.objects.order_by("name").values_list("name", flat=True)),
        "models": sorted(set(ModelDeployment.objects.values_list("name", flat=True))),
    }


def execution_row(*, execution_id: uuid.UUID) -> Execution | None:
    """One execution, everything included (the console may read every execution)."""
    return Execution.objects.filter(pk=execution_id).first()


def deployment_prices(ids: set[int]) -> dict[int, tuple[Decimal | None, Decimal | None]]:
    """Deployment id -> (input, output) USD per million tokens, for the given ids. One query."""
    if not ids:
        return {}
    return {
        pk: (inp, out)
        for pk, inp, out in ModelDeployment.objects.filter(pk__in=ids).values_list(
            "pk", "input_usd_per_mtok", "output_usd_per_mtok"
        )
    }


# --- API keys --------------------------------------------------------------------------------


def api_key_out(key: ApiKey) -> dict[str, Any]:
    """A key as the API shows it: everything but its hash (the plaintext is never stored)."""
    return {
        "id": key.pk,
        "prefix": key.prefix,
        "name": key.name,
        "scopes": key.scopes.split(","),
        # Prefetched by api_key_page; sorted here so that one query serves the whole page.
        "agents": sorted(agent.name for agent in key.agents.all()),
        "rate_limit_rpm": key.rate_limit_rpm,
        "rate_limit_tpm": key.rate_limit_tpm,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": key.last_used_at,
        "created_at": key.created_at,
    }


def api_key_page(*, after: str | None, limit: int) -> dict[str, Any]:
    """Every key, revoked and expired ones included, newest first; keyset-paginated on
    ``(created_at, id)``. Two queries per page (the keys, their allowed agents)."""
    rows = ApiKey.objects.order_by("-created_at", "-id").prefetch_related("agents")
    if after is not None:
        at, ident = _time_cursor(after)
        if not (ident.isascii() and ident.isdigit() and len(ident) <= 18):
            raise ValidationFailed(["after: invalid cursor"])
        rows = rows.filter(created_at__lte=at).filter(
            Q(created_at__lt=at) | Q(created_at=at, id__lt=int(ident))
        )
    page = list(rows[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [api_key_out(key) for key in page],
        "next": cursor_encode(page[-1].created_at.isoformat(), str(page[-1].pk)) if more else None,
    }
