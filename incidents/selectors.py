"""Reads for incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from agents.selectors import cursor_decode, cursor_encode
from core.errors import ValidationFailed
from incidents.models import Incident, IncidentEvent


def incident_visible(allowed: frozenset[str]) -> Q:
    """Incidents a key may see: all for an unrestricted key (``allowed`` empty), else those of
    the agents it may use (deployment-wide incidents concern every agent: unrestricted only)."""
    return Q(agent_name__in=allowed) if allowed else Q()


def _with_timeline(incidents: QuerySet[Incident]) -> QuerySet[Incident]:
    return incidents.prefetch_related(
        Prefetch("events", queryset=IncidentEvent.objects.order_by("at", "id"))
    )


def incident_out(incident: Incident) -> dict[str, Any]:
    return {
        "id": incident.pk,
        "kind": incident.kind,
        "severity": incident.severity,
        "status": incident.status,
        "title": incident.title,
        "agent": incident.agent_name or None,
        "opened_at": incident.opened_at,
        "acknowledged_at": incident.acknowledged_at,
        "acknowledged_by": incident.acknowledged_by,
        "resolved_at": incident.resolved_at,
        "impact": incident.impact,
        "root_cause": incident.root_cause,
        "resolution": incident.resolution,
        "lessons": incident.lessons,
        "timeline": [
            {
                "at": event.at,
                "kind": event.kind,
                "message": event.message,
                "actor": event.actor,
                "data": event.data,
            }
            for event in incident.events.all()
        ],
    }


def incident_detail(*, incident_id: int, allowed: frozenset[str]) -> dict[str, Any] | None:
    incident = _with_timeline(
        Incident.objects.filter(incident_visible(allowed), pk=incident_id)
    ).first()
    return None if incident is None else incident_out(incident)


def incident_page(
    *,
    allowed: frozenset[str],
    status: str | None,
    agent: str | None,
    after: str | None,
    limit: int,
    kind: str | None = None,
) -> dict[str, Any]:
    """Newest first, keyset-paginated on ``(opened_at, id)``, each with its timeline: two
    queries per page."""
    incidents = Incident.objects.filter(incident_visible(allowed)).order_by("-opened_at", "-id")
    if status is not None:
        incidents = incidents.filter(status=status)
    if agent is not None:
        incidents = incidents.filter(agent_name=agent)
    if kind is not None:
        incidents = incidents.filter(kind=kind)
    if after is not None:
        when, ident = cursor_decode(after, 2)
        try:
            at, last = datetime.fromisoformat(when), int(ident)
        except ValueError:
            raise ValidationFailed(["after: invalid cursor"]) from None
        if at.tzinfo is None:
            raise ValidationFailed(["after: invalid cursor"])
        incidents = incidents.filter(opened_at__lte=at).filter(
            Q(opened_at__lt=at) | Q(opened_at=at, id__lt=last)
        )
    page = list(_with_timeline(incidents)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    return {
        "items": [incident_out(incident) for incident in page],
        "next": cursor_encode(page[-1].opened_at.isoformat(), str(page[-1].pk)) if more else None,
    }


def incident_rows(
    *,
    status: str | None = None,
    severity: str | None = None,
    agent: str | None = None,
    after: str | None = None,
    limit: int = 50,
    kind: str | None = None,
) -> tuple[list[Incident], str | None]:
    """A page of incidents without their timelines (the console's list), newest first,
    keyset-paginated on ``(opened_at, id)``: one query whatever the number of incidents.
    ``incident_status_time`` serves the state filter; the others filter that walk."""
    incidents = Incident.objects.order_by("-opened_at", "-id")
    if status:
        incidents = incidents.filter(status=status)
    if severity:
        incidents = incidents.filter(severity=severity)
    if agent:
        incidents = incidents.filter(agent_name=agent)
    if kind:
        incidents = incidents.filter(kind=kind)
    if after is not None:
        when, ident = cursor_decode(after, 2)
        try:
            at, last = datetime.fromisoformat(when), int(ident)
        except ValueError:
            raise ValidationFailed(["after: invalid cursor"]) from None
        if at.tzinfo is None:
            raise ValidationFailed(["after: invalid cursor"])
        incidents = incidents.filter(opened_at__lte=at).filter(
            Q(opened_at__lt=at) | Q(opened_at=at, id__lt=last)
        )
    page = list(incidents[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    cursor = cursor_encode(page[-1].opened_at.isoformat(), str(page[-1].pk)) if more else None
    return page, cursor


def incident_with_timeline(incident_id: int) -> Incident | None:
    """One incident with its timeline (``events``, oldest first): two queries."""
    return _with_timeline(Incident.objects.filter(pk=incident_id)).first()
