"""Writes for agents, breakers, providers and API keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction

from agents.access.services import agent_delete_refusal
from agents.models import Agent
from agents.runtime.ports import EventSink
from agents.runtime.state import BreakerAction, BreakerConfig, BreakerSnapshot, StateStore
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.audit import audit_record
from core.errors import Conflict, NotFound, ValidationFailed

# --- agents (the API's writes; config as code's rules) ---------------------------------------

_DOC_PATH = re.compile(r"^agents\[0\]\.?")


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396): mappings merge, anything else replaces, null removes."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_patch(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _agent_write(data: Mapping[str, Any], *, actor: str) -> None:
    """Validate ``data`` as an ``AgentSpec`` and write it the way ``apply`` does (columns, the
    agent-scope daily budget, audit), inside the caller's transaction."""
    from pydantic import ValidationError

    from agents.config.apply import ConfigError, config_apply
    from agents.config.schema import AgentSpec, ConfigDocument, format_errors

    try:
        spec = AgentSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise ValidationFailed(format_errors(exc)) from None
    try:
        config_apply(document=ConfigDocument(agents=[spec]), actor=actor)
    except ConfigError as exc:
        raise ValidationFailed([_DOC_PATH.sub("", line) for line in exc.errors]) from None


def agent_create(*, data: Mapping[str, Any], actor: str) -> str:
    """Create an agent from config-as-code fields; 409 if the name is taken. Returns its name."""
    name = data.get("name")
    try:
        with transaction.atomic():
            if isinstance(name, str) and Agent.objects.filter(name=name.strip()).exists():
                raise Conflict(f"agent {name.strip()!r} already exists")
            _agent_write(data, actor=actor)
    except IntegrityError:
        if isinstance(name, str) and Agent.objects.filter(name=name.strip()).exists():
            raise Conflict(f"agent {name.strip()!r} already exists") from None  # a racer won
        raise
    return str(data["name"]).strip()


def agent_update(*, name: str, patch: Mapping[str, Any], actor: str) -> None:
    """Merge ``patch`` into the agent, validate the whole agent again, write what changed."""
    from agents.selectors import agent_spec_dict

    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(name=name).first()
        if agent is None:
            raise NotFound(f"agent {name!r} does not exist")
        new_name = patch.get("name", name)
        if new_name != name:
            raise ValidationFailed(
                ["name: cannot be changed; create a new agent and delete this one"]
            )
        daily = (
            Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY, agent=agent)
            .values_list("limit_usd", flat=True)
            .first()
        )
        current = agent_spec_dict(agent, daily)
        _agent_write(_merge_patch(current, patch) | {"name": name}, actor=actor)


def agent_delete(*, name: str, actor: str) -> None:
    """Delete the agent and its budgets (executions keep their ``agent_name``).

    409 if an active API key is restricted to this agent alone: without it, the key's allow-list
    would become empty, which means *every* agent.
    """
    from agents.selectors import agent_spec_dict

    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(name=name).first()
        if agent is None:
            raise NotFound(f"agent {name!r} does not exist")
        refusal = agent_delete_refusal(agent)
        if refusal is not None:
            raise refusal
        budgets = list(Budget.objects.filter(agent=agent))
        daily = next((b.limit_usd for b in budgets if b.window == BudgetWindow.DAILY), None)
        for budget in budgets:
            audit_record(
                actor=actor,
                action="budget_delete",
                target_type="budget",
                target_id=str(budget.pk),
                before={
                    "label": f"budget agent:{name} {budget.window}",
                    "limit_usd": budget.limit_usd,
                },
            )
        audit_record(
            actor=actor,
            action="agent_delete",
            target_type="agent",
            target_id=str(agent.pk),
            before=agent_spec_dict(agent, daily),
        )
        agent.delete()  # its budgets go with it (CASCADE)


# --- breakers --------------------------------------------------------------------------------


class _OpenBreakerCache(Protocol):
    def forget_open_breakers(self) -> None: ...


class BreakerRuntime(Protocol):
    """What a breaker command acts on: the process's engine (``agents.engine.get_engine()``)."""

    @property
    def state(self) -> StateStore: ...
    @property
    def executor(self) -> _OpenBreakerCache: ...
    @property
    def events(self) -> EventSink: ...


async def breaker_command(
    *,
    runtime: BreakerRuntime,
    key: str,
    action: BreakerAction,
    config: BreakerConfig,
    actor: str,
    reason: str = "",
) -> BreakerSnapshot:
    """An operator's breaker action on ``key`` (``agent:<name>`` or ``deployment:<id>``).

    The shared store changes state atomically (every process sees it); the action is audited;
    the resulting transitions go to the engine's events (metrics, incidents) like the runtime's
    own. Returns the breaker's state afterwards.
    """
    engine = runtime
    store = engine.state
    before = await store.breaker_snapshot(key, config)
    transitions = await store.breaker_command(key, action)
    after = await store.breaker_snapshot(key, config)
    await sync_to_async(audit_record)(
        actor=actor,
        action=f"breaker_{action}",
        target_type="breaker",
        target_id=key,
        before={"state": before.state.value},
        after={"state": after.state.value},
        reason=reason,
    )
    why = f"{actor}: {action}" + (f" ({reason})" if reason else "")
    if transitions:
        # Every process's executor refuses calls to breakers it knows to be open without a round
        # trip: forget them here at once, and in the other processes at their next config poll
        # (about a second), or a forced close would wait for the old open-until time there.
        engine.executor.forget_open_breakers()
        await sync_to_async(_config_changed)()
    for transition in transitions:
        engine.events.breaker_transition(replace(transition, reason=why))
    return after


def _config_changed() -> None:
    from agents.config.live import config_version_bump

    with transaction.atomic():
        config_version_bump()
