"""Incident writes: open (deduplicated), add to the timeline, acknowledge, resolve."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from core.audit import audit_record
from incidents.models import Incident, IncidentEvent, IncidentStatus, Severity


def incident_open(
    *,
    kind: str,
    dedup_key: str,
    title: str,
    message: str,
    severity: str = Severity.MAJOR,
    agent_name: str = "",
    data: dict[str, Any] | None = None,
    actor: str = "system",
) -> tuple[Incident, bool]:
    """Open an incident for ``dedup_key`` or, if one is already open, add to its timeline.

    Returns ``(incident, created)``. Safe under concurrency: the database allows one unresolved
    incident per key, and a losing racer appends to the winner's timeline instead.
    """
    for _ in range(2):
        existing = (
            Incident.objects.filter(dedup_key=dedup_key)
            .exclude(status=IncidentStatus.RESOLVED)
            .first()
        )
        if existing is not None:
            incident_event_add(
                incident=existing, kind="recurred", message=message, data=data, actor=actor
            )
            return existing, False
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    kind=kind,
                    dedup_key=dedup_key,
                    title=title[:300],
                    severity=severity,
                    agent_name=agent_name,
                )
                IncidentEvent(
                    incident=incident,
                    kind="opened",
                    message=message,
                    actor=actor,
                    data=data or {},
                ).save()
                audit_record(
                    actor=actor,
                    action="incident_open",
                    target_type="incident",
                    target_id=str(incident.pk),
                    after={"kind": kind, "title": incident.title, "severity": severity},
                )
            return incident, True
        except IntegrityError:
            continue  # someone opened it first; append to theirs
    raise RuntimeError(f"could not open or find the incident for {dedup_key!r}")


def incident_event_add(
    *,
    incident: Incident,
    kind: str,
    message: str,
    data: dict[str, Any] | None = None,
    actor: str = "system",
) -> IncidentEvent:
    event = IncidentEvent(
        incident=incident, kind=kind, message=message, actor=actor, data=data or {}
    )
    event.save()
    return event


def incident_resolve_by_key(
    *, dedup_key: str, message: str, actor: str = "system", data: dict[str, Any] | None = None
) -> Incident | None:
    """Resolve the open incident for ``dedup_key`` (if any), with a timeline entry."""
    with transaction.atomic():
        incident = (
            Incident.objects.select_for_update()
            .filter(dedup_key=dedup_key)
            .exclude(status=IncidentStatus.RESOLVED)
            .first()
        )
        if incident is None:
            return None
        incident.status = IncidentStatus.RESOLVED
        incident.resolved_at = timezone.now()
        incident.save(update_fields=["status", "resolved_at"])
        incident_event_add(
            incident=incident, kind="resolved", message=message, data=data, actor=actor
        )
        audit_record(
            actor=actor,
            action="incident_resolve",
            target_type="incident",
            target_id=str(incident.pk),
            after={"status": "resolved"},
        )
    return incident
