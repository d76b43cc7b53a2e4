"""Incidents with their timelines (docs/INTERFACES.md §4): list, declare, read, and change
(acknowledge, resolve, severity, comments, postmortem fields); and Alertmanager's webhook
(:mod:`incidents.alertmanager`).

Reading needs ``read``; writing needs ``operate`` (``admin`` implies both). A key restricted to
some agents sees only the incidents of those agents (any other is 404); incidents about a shared
deployment concern every agent, so only unrestricted keys see them, and a restricted key may only
declare incidents about its own agents.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Query, Router, Status

from agents.access.auth import Principal
from agents.doors.auth import ApiKeyAuth
from agents.schemas import ERRORS
from core.errors import NotFound
from incidents import selectors
from incidents.alertmanager import alertmanager_receive
from incidents.schemas import (
    AlertmanagerIn,
    AlertmanagerOut,
    IncidentIn,
    IncidentListOut,
    IncidentOut,
    IncidentPatchIn,
    IncidentQuery,
)
from incidents.services import incident_change, incident_declare

router = Router(auth=ApiKeyAuth(), tags=["incidents"])


def _principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def _actor(principal: Principal) -> str:
    return f"apikey:{principal.prefix}"


# --- operations ------------------------------------------------------------------------------


@router.get("/incidents", response={200: IncidentListOut, **ERRORS}, summary="List incidents")
async def incident_list(request: HttpRequest, query: Query[IncidentQuery]) -> dict[str, Any]:
    """Newest first, each with its timeline; filter by ``status``, ``agent`` and ``kind`` (the
    incident class), pass ``next`` as ``after`` for the following page."""
    principal = _principal(request)
    principal.require("read")
    return await sync_to_async(selectors.incident_page)(
        allowed=principal.agents,
        status=query.status,
        agent=query.agent,
        kind=query.kind,
        after=query.after,
        limit=query.limit,
    )


async def _detail(incident_id: int, allowed: frozenset[str]) -> dict[str, Any]:
    incident = await sync_to_async(selectors.incident_detail)(
        incident_id=incident_id, allowed=allowed
    )
    if incident is None:
        raise NotFound(f"incident {incident_id} does not exist")
    return incident


@router.post("/incidents", response={201: IncidentOut, **ERRORS}, summary="Declare an incident")
async def incident_create(request: HttpRequest, payload: IncidentIn) -> Status:
    principal = _principal(request)
    principal.require("operate")
    incident_id = await sync_to_async(incident_declare)(
        title=payload.title,
        severity=payload.severity,
        agent=payload.agent,
        message=payload.message,
        allowed=principal.agents,
        actor=_actor(principal),
    )
    return Status(201, await _detail(incident_id, principal.agents))


@router.get(
    "/incidents/{incident_id}", response={200: IncidentOut, **ERRORS}, summary="Get an incident"
)
async def incident_get(request: HttpRequest, incident_id: int) -> dict[str, Any]:
    principal = _principal(request)
    principal.require("read")
    return await _detail(incident_id, principal.agents)


@router.patch(
    "/incidents/{incident_id}",
    response={200: IncidentOut, **ERRORS},
    summary="Acknowledge, resolve or annotate an incident",
)
async def incident_update(
    request: HttpRequest, incident_id: int, payload: IncidentPatchIn
) -> dict[str, Any]:
    """``status`` acknowledged (records who) or resolved; ``severity``; a ``comment``; the
    postmortem fields ``impact``, ``root_cause``, ``resolution``, ``lessons``."""
    principal = _principal(request)
    principal.require("operate")
    await sync_to_async(incident_change)(
        incident_id=incident_id,
        changes=payload.model_dump(exclude_unset=True),
        allowed=principal.agents,
        actor=_actor(principal),
    )
    return await _detail(incident_id, principal.agents)


@router.post(
    "/alerts/alertmanager",
    response={200: AlertmanagerOut, **ERRORS},
    summary="Receive Alertmanager's webhook",
)
async def alertmanager_webhook(request: HttpRequest, payload: AlertmanagerIn) -> dict[str, Any]:
    """Alertmanager's webhook notification (version 4) as it sends it: each firing alert opens
    (or updates) an ``alert`` incident keyed ``alertmanager:<alertname>:<fingerprint>``, each
    resolved one resolves it; repeats change nothing. Point a ``webhook_configs`` entry here
    with ``http_config.authorization.credentials`` set to an ``operate`` key. A key restricted
    to some agents may only send alerts whose ``labels.agent`` is one of them (else 403)."""
    principal = _principal(request)
    principal.require("operate")
    return await sync_to_async(alertmanager_receive)(
        payload=payload, allowed=principal.agents, actor=_actor(principal)
    )
