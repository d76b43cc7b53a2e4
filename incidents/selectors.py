"""Reads for incidents."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from django.db.models import Prefetch, Q, QuerySet

from agents.selectors import cursor_decode, cursor_encode
from core.errors import ValidationFailed
from incidents.models import (
    DeliveryStatus,
    Incident,
    IncidentEvent,
    NotificationAttempt,
    NotificationChannel,
    NotificationDelivery,
)


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


# --- notifications ---------------------------------------------------------------------------

RECENT_DELIVERIES = 5


def _with_attempts(deliveries: QuerySet[NotificationDelivery]) -> QuerySet[NotificationDelivery]:
    return deliveries.prefetch_related(
        Prefetch("attempt_log", queryset=NotificationAttempt.objects.order_by("number"))
    )


def delivery_out(delivery: NotificationDelivery) -> dict[str, Any]:
    return {
        "id": str(delivery.pk),
        "channel": delivery.channel_name,
        "event": delivery.event,
        "status": delivery.status,
        "incident": delivery.incident_id,
        "attempts": delivery.attempts,
        "max_attempts": delivery.max_attempts,
        "last_error": delivery.last_error,
        "created_at": delivery.created_at,
        "sent_at": delivery.sent_at,
        "next_attempt_at": (
            delivery.next_attempt_at if delivery.status == DeliveryStatus.RETRYING else None
        ),
        "attempt_log": [
            {
                "number": attempt.number,
                "started_at": attempt.started_at,
                "duration_ms": attempt.duration_ms,
                "ok": attempt.ok,
                "response_status": attempt.response_status,
                "error": attempt.error,
            }
            for attempt in delivery.attempt_log.all()
        ],
    }


def channel_out(channel: NotificationChannel) -> dict[str, Any]:
    """A channel as the API shows it: its config (secrets by variable name only) and its most
    recent deliveries (``recent``, prefetched by :func:`notification_channels`)."""
    recent = [delivery_out(d) for d in getattr(channel, "recent", [])]
    return {
        "name": channel.name,
        "kind": channel.kind,
        "url": channel.url or None,
        "url_env": channel.url_env or None,
        "secret_env": channel.secret_env or None,
        "to": list(channel.to),
        "min_severity": channel.min_severity,
        "enabled": channel.enabled,
        "created_at": channel.created_at,
        "updated_at": channel.updated_at,
        "last_delivery": recent[0] if recent else None,
        "recent": recent,
    }


def notification_channels(name: str | None = None) -> list[NotificationChannel]:
    """Every channel (or the one named), each with its newest deliveries as ``recent`` (with
    their attempts): three queries whatever the numbers."""
    recent = _with_attempts(NotificationDelivery.objects.order_by("-created_at", "-id"))[
        :RECENT_DELIVERIES
    ]
    channels = NotificationChannel.objects.order_by("name").prefetch_related(
        Prefetch("deliveries", queryset=recent, to_attr="recent")
    )
    if name is not None:
        channels = channels.filter(name=name)
    return list(channels)


def delivery_page(
    *, channel: str | None = None, after: str | None = None, limit: int = 50
) -> tuple[list[NotificationDelivery], str | None]:
    """A page of the delivery log, newest first, keyset-paginated on ``(created_at, id)``, each
    with its attempts: two queries."""
    deliveries = NotificationDelivery.objects.order_by("-created_at", "-id")
    if channel:
        deliveries = deliveries.filter(channel_name=channel)
    if after is not None:
        when, ident = cursor_decode(after, 2)
        try:
            at, last = datetime.fromisoformat(when), uuid.UUID(ident)
        except ValueError:
            raise ValidationFailed(["after: invalid cursor"]) from None
        if at.tzinfo is None:
            raise ValidationFailed(["after: invalid cursor"])
        deliveries = deliveries.filter(created_at__lte=at).filter(
            Q(created_at__lt=at) | Q(created_at=at, id__lt=last)
        )
    page = list(_with_attempts(deliveries)[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    cursor = cursor_encode(page[-1].created_at.isoformat(), str(page[-1].pk)) if more else None
    return page, cursor
