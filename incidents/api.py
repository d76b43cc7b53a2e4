"""Incidents with their timelines (docs/INTERFACES.md §4): list, declare, read, and change
(acknowledge, resolve, severity, comments, postmortem fields).

Reading needs ``read``; writing needs ``operate`` (``admin`` implies both). A key restricted to
some agents sees only the incidents of those agents (any other is 404); incidents about a shared
deployment concern every agent, so only unrestricted keys see them, and a restricted key may only
declare incidents about its own agents.
"""

from __future__ import annotations

import uuid
from typing import Any

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest
from django.utils import timezone
from ninja import Query, Router, Status

from agents.access.auth import PermissionDenied, Principal
from agents.doors.auth import ApiKeyAuth
from agents.models import Agent
from agents.schemas import ERRORS
from core.audit import audit_record
from core.errors import Conflict, NotFound, ValidationFailed
from incidents import selectors
from incidents.models import Incident, IncidentStatus
from incidents.schemas import (
    POSTMORTEM_FIELDS,
    IncidentIn,
    IncidentListOut,
    IncidentOut,
    IncidentPatchIn,
    IncidentQuery,
)
from incidents.services import incident_event_add, incident_open

router = Router(auth=ApiKeyAuth(), tags=["incidents"])


def _principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def _actor(principal: Principal) -> str:
    return f"apikey:{principal.prefix}"


# --- writes ----------------------------------------------------------------------------------
# These belong in incidents/services.py (house style); they live here until that module's owner
# moves them, since this change could not touch it.


def incident_declare(
    *,
    title: str,
    severity: str,
    agent: str | None,
    message: str,
    allowed: frozenset[str],
    actor: str,
) -> int:
    """Open an incident by hand; returns its id."""
    if allowed and agent is None:
        raise PermissionDenied(
            "a key restricted to some agents may only declare incidents about one of them"
        )
    if agent is not None and (
        (allowed and agent not in allowed) or not Agent.objects.filter(name=agent).exists()
    ):
        raise ValidationFailed([f"agent: unknown agent {agent!r}"])
    incident, _ = incident_open(
        kind="manual",
        dedup_key=f"manual:{uuid.uuid4()}",  # declared incidents never merge
        title=title,
        message=message or f"declared by {actor}",
        severity=severity,
        agent_name=agent or "",
        actor=actor,
    )
    return incident.pk


def incident_change(
    *, incident_id: int, changes: dict[str, Any], allowed: frozenset[str], actor: str
) -> None:
    """Apply ``changes`` (an :class:`IncidentPatchIn`'s set fields) in one transaction: each
    change is a timeline entry; the whole is one audit record. Unchanged values write nothing.

    Status moves forward only: open -> acknowledged -> resolved (or open -> resolved);
    acknowledging a resolved incident is a conflict (409).
    """
    with transaction.atomic():
        incident = (
            Incident.objects.select_for_update()
            .filter(selectors.incident_visible(allowed), pk=incident_id)
            .first()
        )
        if incident is None:
            raise NotFound(f"incident {incident_id} does not exist")
        before: dict[str, Any] = {}
        after: dict[str, Any] = {}
        events: list[tuple[str, str, dict[str, Any]]] = []
        now = timezone.now()

        status = changes.get("status")
        if status == IncidentStatus.ACKNOWLEDGED and incident.status == IncidentStatus.RESOLVED:
            raise Conflict(f"incident {incident_id} is resolved; it cannot be acknowledged")
        if status is not None and status != incident.status:
            before["status"], after["status"] = incident.status, status
            incident.status = status
            if status == IncidentStatus.ACKNOWLEDGED:
                incident.acknowledged_at, incident.acknowledged_by = now, actor
                events.append(("acknowledged", f"acknowledged by {actor}", {}))
            else:
                incident.resolved_at = now
                events.append(("resolved", f"resolved by {actor}", {}))

        severity = changes.get("severity")
        if severity is not None and severity != incident.severity:
            before["severity"], after["severity"] = incident.severity, severity
            events.append(
                ("severity", f"severity {incident.severity} -> {severity}", {"to": severity})
            )
            incident.severity = severity

        edited = [
            name
            for name in POSTMORTEM_FIELDS
            if changes.get(name) is not None and changes[name] != getattr(incident, name)
        ]
        for name in edited:
            before[name], after[name] = getattr(incident, name), changes[name]
            setattr(incident, name, changes[name])
        if edited:
            events.append(("postmortem", f"postmortem: {', '.join(edited)} updated", {}))

        if changes.get("comment"):
            after["comment"] = changes["comment"]
            events.append(("comment", changes["comment"], {}))

        if not events:
            return
        incident.save()
        for kind, message, data in events:
            incident_event_add(
                incident=incident, kind=kind, message=message, data=data, actor=actor
            )
        audit_record(
            actor=actor,
            action="incident_update",
            target_type="incident",
            target_id=str(incident.pk),
            before=before,
            after=after,
        )


# --- operations ------------------------------------------------------------------------------


@router.get("/incidents", response={200: IncidentListOut, **ERRORS}, summary="List incidents")
async def incident_list(request: HttpRequest, query: Query[IncidentQuery]) -> dict[str, Any]:
    """Newest first, each with its timeline; filter by ``status`` and ``agent``, pass ``next``
    as ``after`` for the following page."""
    principal = _principal(request)
    principal.require("read")
    return await sync_to_async(selectors.incident_page)(
        allowed=principal.agents,
        status=query.status,
        agent=query.agent,
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
