"""Agents, their breakers, deployments and executions (docs/INTERFACES.md §4).

Scopes: ``admin`` implies every scope and ``operate`` implies ``read`` (:class:`Principal`).
A key restricted to some agents sees only those: any other agent is 404, as if it did not exist,
and it cannot create agents (only an unrestricted ``admin`` key can). Deployments are shared by
every agent, so any ``read`` key lists them, but only an unrestricted ``operate`` key may command
their breakers.

Who sees which execution (``GET /executions/{id}`` and ``GET /executions``):

* a key always sees the executions it made itself (an ``execute``-only key can follow up on its
  own work, e.g. one it queued);
* a key with ``read`` (or ``operate``/``admin``) also sees every execution of the agents it may
  use: all of them for an unrestricted key, its allow-list for a restricted one;
* anything else is 404, so a key cannot learn that another key's execution exists.

What it shows: provider error text in ``steps[].detail`` and ``error`` only to ``operate`` and
``admin`` keys; others get a typed summary (``agents.access.disclosure``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Query, Router, Status

from agents import selectors, services
from agents.access.auth import PermissionDenied, Principal
from agents.access.disclosure import render_execution, sees_provider_text
from agents.doors.auth import ApiKeyAuth
from agents.doors.execute import execute_now
from agents.engine import get_engine
from agents.runtime.state import (
    BreakerConfig,
    BreakerSnapshot,
    agent_breaker_key,
    deployment_breaker_key,
)
from agents.schemas import (
    ERRORS,
    AgentIn,
    AgentListOut,
    AgentOut,
    AgentPatchIn,
    BreakerActionIn,
    BreakerOut,
    DeploymentListOut,
    ExecuteIn,
    ExecutionDetailOut,
    ExecutionListOut,
    ExecutionOut,
    ExecutionQuery,
    PageQuery,
)
from core.errors import NotFound

router = Router(auth=ApiKeyAuth())


def _principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def _actor(principal: Principal) -> str:
    return f"apikey:{principal.prefix}"


def _has(principal: Principal, scope: str) -> bool:
    try:
        principal.require(scope)
    except PermissionDenied:
        return False
    return True


def _visible_agent(principal: Principal, name: str) -> None:
    if not principal.may_use(name):
        raise NotFound(f"agent {name!r} does not exist")


async def _reload_config() -> None:
    # Other processes pick the change up within ~1 s; this one at once, so a client that
    # creates an agent and then calls it is not refused by its own server.
    await sync_to_async(get_engine().config.reload)()


# --- execute ---------------------------------------------------------------------------------


@router.post(
    "/agents/{name}/execute",
    response={200: ExecutionOut, **ERRORS},
    summary="Run an agent now",
    tags=["executions"],
)
async def agent_execute(request: HttpRequest, name: str, payload: ExecuteIn) -> dict[str, object]:
    """Run the agent now through every safeguard. Degraded answers are 200 with the agent's
    fallback message as ``output`` (graceful degradation). ``Idempotency-Key`` is honoured."""
    # Served by the lean ASGI app (agents/doors/rest.py) in practice; this route documents the
    # endpoint and answers what that app hands to Django. Both run agents.doors.execute.execute_now.
    return await execute_now(
        principal=_principal(request),
        name=name,
        payload=payload,
        idempotency_key=request.headers.get("Idempotency-Key"),
        method=request.method or "POST",
        path=request.path,
        body=request.body,
    )


# --- agents ----------------------------------------------------------------------------------


@router.get(
    "/agents",
    response={200: AgentListOut, **ERRORS},
    summary="List agents",
    tags=["agents"],
)
async def agent_list(request: HttpRequest, query: Query[PageQuery]) -> dict[str, Any]:
    """Agent configs by name (the fields of config as code), ``limit`` at a time."""
    principal = _principal(request)
    principal.require("read")
    return await sync_to_async(selectors.agent_page)(
        allowed=principal.agents, after=query.after, limit=query.limit
    )


@router.post(
    "/agents",
    response={201: AgentOut, **ERRORS},
    summary="Create an agent",
    tags=["agents"],
)
async def agent_create(request: HttpRequest, payload: AgentIn) -> Status:
    """Create an agent from the fields of config as code, validated as ``apply`` validates them
    (422 lists every problem as ``path: message``); 409 if the name is taken."""
    principal = _principal(request)
    principal.require("admin")
    if principal.agents:
        raise PermissionDenied("a key restricted to some agents cannot create agents")
    name = await sync_to_async(services.agent_create)(
        data=payload.as_dict(), actor=_actor(principal)
    )
    await _reload_config()
    return Status(201, await sync_to_async(selectors.agent_detail)(name=name))


async def _agent_or_404(name: str) -> dict[str, Any]:
    agent = await sync_to_async(selectors.agent_detail)(name=name)
    if agent is None:
        raise NotFound(f"agent {name!r} does not exist")
    return agent


@router.get(
    "/agents/{name}",
    response={200: AgentOut, **ERRORS},
    summary="Get an agent",
    tags=["agents"],
)
async def agent_get(request: HttpRequest, name: str) -> dict[str, Any]:
    principal = _principal(request)
    principal.require("read")
    _visible_agent(principal, name)
    return await _agent_or_404(name)


@router.patch(
    "/agents/{name}",
    response={200: AgentOut, **ERRORS},
    summary="Change an agent",
    tags=["agents"],
)
async def agent_update(request: HttpRequest, name: str, payload: AgentPatchIn) -> dict[str, Any]:
    """Merge the given fields into the agent (mappings merge, lists are replaced, ``null``
    restores a default) and validate the whole agent again; the name cannot change."""
    principal = _principal(request)
    principal.require("admin")
    _visible_agent(principal, name)
    await sync_to_async(services.agent_update)(
        name=name, patch=payload.as_dict(), actor=_actor(principal)
    )
    await _reload_config()
    return await _agent_or_404(name)


@router.delete(
    "/agents/{name}",
    response={204: None, **ERRORS},
    summary="Delete an agent",
    tags=["agents"],
)
async def agent_delete(request: HttpRequest, name: str) -> Status:
    """Delete the agent and its budgets; its executions stay (they name the agent). 409 while
    an API key may use this agent alone."""
    principal = _principal(request)
    principal.require("admin")
    _visible_agent(principal, name)
    await sync_to_async(services.agent_delete)(name=name, actor=_actor(principal))
    await _reload_config()
    return Status(204, None)


# --- breakers and deployments ----------------------------------------------------------------


def _breaker_out(snapshot: BreakerSnapshot) -> dict[str, Any]:
    # The snapshot is the breaker's effective state (open past its recovery time reads
    # half_open); /metrics reads the same snapshot at scrape time, so they agree.
    return {
        "key": snapshot.key,
        "state": snapshot.state.value,
        "consecutive_failures": snapshot.consecutive_failures,
        "window_calls": snapshot.window_calls,
        "window_failures": snapshot.window_failures,
        "window_slow": snapshot.window_slow,
        "open_until": (
            None
            if snapshot.open_until is None
            else datetime.fromtimestamp(snapshot.open_until, tz=UTC)
        ),
        "probes_in_flight": snapshot.probes_in_flight,
    }


async def _agent_breaker(principal: Principal, name: str) -> BreakerConfig:
    _visible_agent(principal, name)
    config = await sync_to_async(selectors.agent_breaker_config)(name=name)
    if config is None:
        raise NotFound(f"agent {name!r} does not exist")
    return config


@router.get(
    "/agents/{name}/breaker",
    response={200: BreakerOut, **ERRORS},
    summary="Get an agent's circuit breaker",
    tags=["breakers"],
)
async def agent_breaker_get(request: HttpRequest, name: str) -> dict[str, Any]:
    """The breaker's state in the shared store, as every process sees it."""
    principal = _principal(request)
    principal.require("read")
    config = await _agent_breaker(principal, name)
    key = agent_breaker_key(name)
    return _breaker_out(await get_engine().state.breaker_snapshot(key, config))


@router.post(
    "/agents/{name}/breaker",
    response={200: BreakerOut, **ERRORS},
    summary="Command an agent's circuit breaker",
    tags=["breakers"],
)
async def agent_breaker_command(
    request: HttpRequest, name: str, payload: BreakerActionIn
) -> dict[str, Any]:
    """``force_open``, ``force_close``, ``disable`` or ``reset``; audited, and the transition
    reaches metrics and incidents like any other."""
    principal = _principal(request)
    principal.require("operate")
    config = await _agent_breaker(principal, name)
    snapshot = await services.breaker_command(
        runtime=get_engine(),
        key=agent_breaker_key(name),
        action=payload.action,
        config=config,
        actor=_actor(principal),
        reason=payload.reason,
    )
    return _breaker_out(snapshot)


@router.get(
    "/deployments",
    response={200: DeploymentListOut, **ERRORS},
    summary="List model deployments",
    tags=["deployments"],
)
async def deployment_list(request: HttpRequest) -> dict[str, Any]:
    """Every deployment with its breaker and in-flight calls (live, from the shared store).
    Deployments are few, so the list is one page (``next`` is null)."""
    principal = _principal(request)
    principal.require("read")
    rows = await sync_to_async(selectors.deployment_rows)()
    store = get_engine().state
    ids = tuple(row["id"] for row in rows)
    in_flight = await store.in_flight(ids) if ids else {}
    snapshots = await asyncio.gather(
        *(
            store.breaker_snapshot(deployment_breaker_key(id_), get_engine().deployment_breaker)
            for id_ in ids
        )
    )
    items = [
        row | {"breaker": _breaker_out(snapshot), "in_flight": in_flight.get(row["id"], 0)}
        for row, snapshot in zip(rows, snapshots, strict=True)
    ]
    return {"items": items, "next": None}


@router.post(
    "/deployments/{deployment_id}/breaker",
    response={200: BreakerOut, **ERRORS},
    summary="Command a deployment's circuit breaker",
    tags=["breakers"],
)
async def deployment_breaker_command(
    request: HttpRequest, deployment_id: int, payload: BreakerActionIn
) -> dict[str, Any]:
    """Same actions as an agent's breaker. A deployment serves every agent, so only a key that
    is not restricted to some agents may command it."""
    principal = _principal(request)
    principal.require("operate")
    if principal.agents:
        raise PermissionDenied(
            "a key restricted to some agents cannot command a deployment shared by all"
        )
    if not await sync_to_async(selectors.deployment_exists)(deployment_id=deployment_id):
        raise NotFound(f"deployment {deployment_id} does not exist")
    snapshot = await services.breaker_command(
        runtime=get_engine(),
        key=deployment_breaker_key(deployment_id),
        action=payload.action,
        config=get_engine().deployment_breaker,
        actor=_actor(principal),
        reason=payload.reason,
    )
    return _breaker_out(snapshot)


# --- executions ------------------------------------------------------------------------------


def _execution_access(principal: Principal) -> selectors.ExecutionAccess:
    """The rule in this module's docstring."""
    if not _has(principal, "read"):
        if not _has(principal, "execute"):
            raise PermissionDenied("this API key lacks the 'read' scope")
        return selectors.ExecutionAccess(principal.key_id, frozenset())
    return selectors.ExecutionAccess(principal.key_id, principal.agents or None)


@router.get(
    "/executions/{execution_id}",
    response={200: ExecutionDetailOut, **ERRORS},
    summary="Get an execution",
    tags=["executions"],
)
async def execution_get(request: HttpRequest, execution_id: str) -> dict[str, Any]:
    """One stored execution (``queued`` and ``running`` ones included), with its input."""
    principal = _principal(request)
    access = _execution_access(principal)
    row = await sync_to_async(selectors.execution_detail)(execution_id=execution_id, access=access)
    if row is None:
        raise NotFound(f"execution {execution_id!r} does not exist")
    return render_execution(row, full=sees_provider_text(principal.scopes))


@router.get(
    "/executions",
    response={200: ExecutionListOut, **ERRORS},
    summary="List executions",
    tags=["executions"],
)
async def execution_list(request: HttpRequest, query: Query[ExecutionQuery]) -> dict[str, Any]:
    """Newest first; pass ``next`` as ``after`` for the following page (422 if it is not a
    cursor this API gave)."""
    principal = _principal(request)
    access = _execution_access(principal)
    page: dict[str, Any] = await sync_to_async(selectors.execution_page)(
        access=access,
        agent=query.agent,
        status=query.status,
        after=query.after,
        limit=query.limit,
    )
    full = sees_provider_text(principal.scopes)
    if not full:
        page["items"] = [render_execution(item, full=False) for item in page["items"]]
    return page
