"""Incident writes: open (deduplicated), declare by hand, add to the timeline, change
(acknowledge, resolve, re-grade, comment, postmortem), resolve by key. The API
(:mod:`incidents.api`) and the console pages call these."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.access.auth import PermissionDenied
from agents.models import Agent
from core.audit import audit_record
from core.errors import Conflict, NotFound, ValidationFailed
from incidents.models import (
    SEVERITY_RANK,
    DeliveryEvent,
    Incident,
    IncidentEvent,
    IncidentStatus,
    Severity,
)
from incidents.notifications import incident_announce
from incidents.schemas import POSTMORTEM_FIELDS


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

    A key whose incident was resolved less than ``BREAKWATER_NOTIFY_FLAP_S`` ago reopens that
    incident (timeline ``reopened``, ``created`` False) instead of opening a new one: a flapping
    breaker is one incident, and is not announced again each time (incidents.notifications).
    A recurrence with a higher severity escalates the incident. A new incident is announced to
    the notification channels, an escalation too.
    """
    for _ in range(3):
        existing = (
            Incident.objects.filter(dedup_key=dedup_key)
            .exclude(status=IncidentStatus.RESOLVED)
            .first()
        )
        if existing is not None:
            with transaction.atomic():
                incident_event_add(
                    incident=existing, kind="recurred", message=message, data=data, actor=actor
                )
                _escalate(existing, severity, actor=actor, why="recurred")
            return existing, False
        reopened = _reopen(dedup_key, message=message, data=data, actor=actor)
        if reopened is _RACED:
            continue
        if reopened is not None:
            assert isinstance(reopened, Incident)
            with transaction.atomic():
                _escalate(reopened, severity, actor=actor, why="reopened")
            return reopened, False
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    kind=kind,
                    dedup_key=dedup_key,
                    title=title[:300],
                    severity=severity,
                    agent_name=agent_name,
                )
                opened = IncidentEvent(
                    incident=incident,
                    kind="opened",
                    message=message,
                    actor=actor,
                    data=data or {},
                )
                opened.save()
                audit_record(
                    actor=actor,
                    action="incident_open",
                    target_type="incident",
                    target_id=str(incident.pk),
                    after={"kind": kind, "title": incident.title, "severity": severity},
                )
                incident_announce(incident=incident, trigger=opened, event=DeliveryEvent.OPENED)
            return incident, True
        except IntegrityError:
            continue  # someone opened it first; append to theirs
    raise RuntimeError(f"could not open or find the incident for {dedup_key!r}")


_RACED = object()


def _reopen(
    dedup_key: str, *, message: str, data: dict[str, Any] | None, actor: str
) -> Incident | object | None:
    """Reopen the key's incident resolved within the flap cool-down, silently (the channels hear
    of it only if it stays open past the cool-down): the incident, None (none to reopen), or
    ``_RACED`` (another process opened one meanwhile)."""
    flap_s = settings.BREAKWATER_NOTIFY_FLAP_S
    if flap_s <= 0:
        return None
    recent = (
        Incident.objects.filter(
            dedup_key=dedup_key,
            status=IncidentStatus.RESOLVED,
            resolved_at__gte=timezone.now() - timedelta(seconds=flap_s),
        )
        .order_by("-resolved_at", "-id")
        .first()
    )
    if recent is None:
        return None
    try:
        with transaction.atomic():
            changed = Incident.objects.filter(pk=recent.pk, status=IncidentStatus.RESOLVED).update(
                status=IncidentStatus.OPEN, resolved_at=None
            )
            if not changed:
                return _RACED
            recent.refresh_from_db()
            incident_event_add(
                incident=recent,
                kind="reopened",
                message=message,
                data=(data or {}) | {"flap_s": flap_s},
                actor=actor,
            )
            audit_record(
                actor=actor,
                action="incident_reopen",
                target_type="incident",
                target_id=str(recent.pk),
                before={"status": "resolved"},
                after={"status": "open"},
            )
    except IntegrityError:  # a new incident for the key was opened meanwhile
        return _RACED
    return recent


def _escalate(incident: Incident, severity: str, *, actor: str, why: str) -> None:
    """Raise ``incident``'s severity to ``severity`` if that is higher (a timeline entry, and
    an announcement); a lower one changes nothing."""
    if SEVERITY_RANK[Severity(severity)] <= SEVERITY_RANK[Severity(incident.severity)]:
        return
    raised = Incident.objects.filter(pk=incident.pk, severity=incident.severity).update(
        severity=severity
    )
    if not raised:
        return
    before, incident.severity = incident.severity, severity
    entry = incident_event_add(
        incident=incident,
        kind="severity",
        message=f"severity {before} -> {severity} ({why})",
        data={"to": severity},
        actor=actor,
    )
    incident_announce(incident=incident, trigger=entry, event=DeliveryEvent.ESCALATED)


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
        entry = incident_event_add(
            incident=incident, kind="resolved", message=message, data=data, actor=actor
        )
        _announce_resolved(incident, entry)
        audit_record(
            actor=actor,
            action="incident_resolve",
            target_type="incident",
            target_id=str(incident.pk),
            after={"status": "resolved"},
        )
    return incident


def _announce_resolved(incident: Incident, entry: IncidentEvent) -> None:
    """Channels hear of a resolution only if they were told the incident was open (a flapping
    incident's repeated resolutions are not announced again)."""
    if incident.notified == "open":
        incident_announce(incident=incident, trigger=entry, event=DeliveryEvent.RESOLVED)


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
        incident = Incident.objects.select_for_update().filter(pk=incident_id).first()
        # As incidents.selectors.incident_visible (not imported: agents.config.live, which that
        # module's imports reach, opens incidents here).
        if incident is None or (allowed and incident.agent_name not in allowed):
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
            entry = incident_event_add(
                incident=incident, kind=kind, message=message, data=data, actor=actor
            )
            if kind == "resolved":
                _announce_resolved(incident, entry)
            elif (
                kind == "severity"
                and incident.status != IncidentStatus.RESOLVED
                and SEVERITY_RANK[Severity(after["severity"])]
                > SEVERITY_RANK[Severity(before["severity"])]
            ):
                incident_announce(incident=incident, trigger=entry, event=DeliveryEvent.ESCALATED)
        audit_record(
            actor=actor,
            action="incident_update",
            target_type="incident",
            target_id=str(incident.pk),
            before=before,
            after=after,
        )
