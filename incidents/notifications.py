"""Notifications: which channels hear of an incident event, and delivering each message once
(docs/OPERATIONS.md, "Notifications"; docs/DECISIONS.md #18).

**Enqueue.** :func:`incident_announce` (called by :mod:`incidents.services` inside the
transaction that writes the timeline entry) creates one :class:`NotificationDelivery` per enabled
channel whose ``min_severity`` the incident reaches, with the payload fixed as of the event, and
hands each to a worker once the transaction commits. A channel hears of a timeline entry at most
once: the database allows one delivery per channel and entry.

**Deliver.** :func:`delivery_attempt` (the Celery task ``incidents.tasks.notification_deliver``,
on a Celery worker or the in-process one) claims the row with a conditional UPDATE (pending or
retrying, no live claim), sends once, logs the attempt, and records ``sent``, or ``retrying`` with
the next attempt handed to a worker after an exponential backoff with jitter, or ``failed`` after
the last attempt. A row recorded ``sent`` is never sent again; an attempt that died mid-send
(its claim lapses) is sent again by :func:`notifications_sweep`, with the same delivery id, so
a receiver can drop the repeat.

**Flapping.** A key that opens again within ``BREAKWATER_NOTIFY_FLAP_S`` of its incident's
resolution reopens that incident silently (:mod:`incidents.services`); it is announced again
("opened", ``reopened: true``) only if it is still open once the cool-down has passed
(:func:`notifications_sweep`), and its next resolution is announced only if channels were told it
was open. ``Incident.notified`` records what the channels were last told.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from agents.config.schema import NotificationSpec
from core.audit import audit_record
from core.errors import NotFound
from incidents import channels
from incidents.models import (
    DeliveryEvent,
    DeliveryStatus,
    Incident,
    IncidentEvent,
    IncidentStatus,
    NotificationAttempt,
    NotificationChannel,
    NotificationDelivery,
)

log = logging.getLogger("breakwater.notifications")

DELIVER_TASK = "incidents.tasks.notification_deliver"
TIMELINE_EXCERPT = 5
ERROR_MAX = 2000
SWEEP_LIMIT = 200
# An attempt claims its row for this long: longer than any one send (the HTTP or SMTP timeout,
# plus name resolution); past it, the attempt is taken for dead and the sweep sends again.
CLAIM_MARGIN_S = 30.0
# A pending row the sweep finds this long after it was due lost its hand-off (a process died
# between commit and dispatch, a broker was away): it is handed to a worker again.
LOST_AFTER_S = 30.0
_OPEN = "open"
_RESOLVED = "resolved"


def channel_values(spec: NotificationSpec) -> dict[str, Any]:
    """Column values for a channel spec (config as code and the API): secrets by variable name
    only."""
    return {
        "kind": spec.kind,
        "url": spec.url or "",
        "url_env": spec.url_env or "",
        "secret_env": spec.secret_env or "",
        "to": list(spec.to),
        "min_severity": spec.min_severity,
        "enabled": spec.enabled,
    }


def notification_channel_put(
    *, spec: NotificationSpec, actor: str
) -> tuple[NotificationChannel, bool]:
    """Create channel ``spec.name`` or make it match ``spec`` (the API's POST; ``apply`` does
    the same for a whole document). Audited when something changed. ``(channel, created)``."""
    values = channel_values(spec)
    with transaction.atomic():
        channel = NotificationChannel.objects.select_for_update().filter(name=spec.name).first()
        if channel is None:
            channel = NotificationChannel.objects.create(name=spec.name, **values)
            audit_record(
                actor=actor,
                action="notificationchannel_create",
                target_type="notificationchannel",
                target_id=str(channel.pk),
                after=values,
            )
            return channel, True
        changed = {name: value for name, value in values.items() if getattr(channel, name) != value}
        if changed:
            before = {name: getattr(channel, name) for name in changed}
            for name, value in changed.items():
                setattr(channel, name, value)
            channel.save(update_fields=[*changed, "updated_at"])
            audit_record(
                actor=actor,
                action="notificationchannel_update",
                target_type="notificationchannel",
                target_id=str(channel.pk),
                before=before,
                after=changed,
            )
    return channel, False


def console_url(path: str) -> str:
    return str(settings.BREAKWATER_CONSOLE_URL).rstrip("/") + path


def incident_payload(incident: Incident, event: str, *, reopened: bool = False) -> dict[str, Any]:
    """What every channel is told of ``event``: the incident as it is now, the end of its
    timeline and a link to its console page."""
    recent = list(
        IncidentEvent.objects.filter(incident=incident).order_by("-at", "-id")[:TIMELINE_EXCERPT]
    )
    return {
        "event": event,
        "reopened": reopened,
        "incident": {
            "id": incident.pk,
            "kind": incident.kind,
            "title": incident.title,
            "severity": incident.severity,
            "status": incident.status,
            "agent": incident.agent_name or None,
            "opened_at": incident.opened_at.isoformat(),
            "resolved_at": incident.resolved_at.isoformat() if incident.resolved_at else None,
            "url": console_url(f"/incidents/{incident.pk}/"),
        },
        "timeline": [
            {"at": e.at.isoformat(), "kind": e.kind, "message": e.message[:500]}
            for e in reversed(recent)
        ],
    }


def _backoff_s(attempts: int) -> float:
    """The wait after failed attempt number ``attempts``: BACKOFF_S x 2^(attempts-1), capped,
    +/- JITTER of it (so deliveries that failed together do not retry together)."""
    base = min(
        settings.BREAKWATER_NOTIFY_BACKOFF_MAX_S,
        settings.BREAKWATER_NOTIFY_BACKOFF_S * 2 ** (attempts - 1),
    )
    jitter = settings.BREAKWATER_NOTIFY_JITTER
    return float(base * random.uniform(1 - jitter, 1 + jitter))


# How a delivery reaches a worker: ``agents.backends.work_dispatch`` (a Celery message, or the
# in-process worker in embedded mode), installed by ``incidents.apps`` at start-up. Not imported
# here: the agents app's config layer opens incidents, and must not reach its own backends.
Dispatch = Callable[..., None]
_dispatcher: Dispatch | None = None


def dispatcher_install(dispatch: Dispatch) -> None:
    global _dispatcher
    _dispatcher = dispatch


def _dispatch(delivery_id: str, countdown: float = 0.0) -> None:
    try:
        if _dispatcher is None:
            raise RuntimeError("no dispatcher installed (incidents.apps.ready has not run)")
        _dispatcher(DELIVER_TASK, {"delivery_id": delivery_id}, countdown=countdown)
    except Exception:  # the row is recorded: the sweep hands it over again
        log.warning(
            "could not hand delivery %s to a worker; the sweep will", delivery_id, exc_info=True
        )


def _dispatch_on_commit(ids: list[str]) -> None:
    def hand_over() -> None:
        for delivery_id in ids:
            _dispatch(delivery_id)

    transaction.on_commit(hand_over)


def _create(
    targets: list[NotificationChannel],
    *,
    event: str,
    payload: dict[str, Any],
    incident: Incident | None,
    trigger: IncidentEvent | None,
    actor: str = "system",
) -> list[NotificationDelivery]:
    now = timezone.now()
    rows = [
        NotificationDelivery(
            channel=channel,
            channel_name=channel.name,
            incident=incident,
            trigger=trigger,
            event=event,
            payload=payload | {"channel": channel.name},
            max_attempts=settings.BREAKWATER_NOTIFY_ATTEMPTS,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
            actor=actor,
        )
        for channel in targets
    ]
    NotificationDelivery.objects.bulk_create(rows)
    _dispatch_on_commit([str(row.pk) for row in rows])
    return rows


def incident_announce(
    *, incident: Incident, trigger: IncidentEvent, event: str, reopened: bool = False
) -> int:
    """Queue ``event`` (opened, escalated, resolved) of ``incident``, whose timeline entry is
    ``trigger``, to every enabled channel that routes its severity; call inside the transaction
    that wrote ``trigger``. Records what the channels were told on the incident. Returns the
    number of deliveries queued."""
    incident.notified = _RESOLVED if event == DeliveryEvent.RESOLVED else _OPEN
    Incident.objects.filter(pk=incident.pk).update(notified=incident.notified)
    targets = [
        channel
        for channel in NotificationChannel.objects.filter(enabled=True)
        if channel.routes(incident.severity)
    ]
    if not targets:
        return 0
    payload = incident_payload(incident, event, reopened=reopened)
    return len(_create(targets, event=event, payload=payload, incident=incident, trigger=trigger))


def notification_test(*, name: str, actor: str) -> NotificationDelivery:
    """Queue a test message to channel ``name`` (enabled or not), audited."""
    channel = NotificationChannel.objects.filter(name=name).first()
    if channel is None:
        raise NotFound(f"notification channel {name!r} does not exist")
    payload = {
        "event": DeliveryEvent.TEST,
        "reopened": False,
        "incident": None,
        "timeline": [],
        "message": f"A test from Breakwater, sent by {actor}. Nothing is wrong.",
        "url": console_url("/notifications/"),
    }
    with transaction.atomic():
        (delivery,) = _create(
            [channel],
            event=DeliveryEvent.TEST,
            payload=payload,
            incident=None,
            trigger=None,
            actor=actor,
        )
        audit_record(
            actor=actor,
            action="notification_test",
            target_type="notificationchannel",
            target_id=str(channel.pk),
            after={"delivery": str(delivery.pk)},
        )
    return delivery


# --- delivering ------------------------------------------------------------------------------


def _claim(delivery_id: str, now: datetime) -> datetime | None:
    """Take the row for one attempt (one conditional UPDATE; a concurrent or repeated hand-off
    changes nothing); the claim's expiry, or None when there is nothing to do."""
    until = now + timedelta(
        seconds=max(settings.BREAKWATER_NOTIFY_TIMEOUT_S, settings.EMAIL_TIMEOUT) + CLAIM_MARGIN_S
    )
    claimed = (
        NotificationDelivery.objects.filter(
            pk=delivery_id,
            status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING],
            # A hand-off never comes much before it is due; a stray early one waits its turn.
            next_attempt_at__lte=now + timedelta(seconds=1),
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .filter(attempts__lt=F("max_attempts"))
        .update(claimed_until=until, attempts=F("attempts") + 1, updated_at=now)
    )
    return until if claimed == 1 else None


def delivery_attempt(delivery_id: str) -> str:
    """One attempt at ``delivery_id``: ``sent``, ``retrying``, ``failed``, or ``skipped`` (sent
    already, failed for good, not due, or another attempt in flight)."""
    try:
        uuid.UUID(delivery_id)
    except ValueError:
        return "skipped"
    started = timezone.now()
    until = _claim(delivery_id, started)
    if until is None:
        return "skipped"
    delivery = NotificationDelivery.objects.select_related("channel").get(pk=delivery_id)
    status: int | None = None
    error = ""
    try:
        if delivery.channel is None:
            raise channels.SendFailed(f"channel {delivery.channel_name} was deleted")
        if not delivery.channel.enabled and delivery.event != DeliveryEvent.TEST:
            raise channels.SendFailed(f"channel {delivery.channel_name} is disabled")
        status = channels.send(
            delivery.channel, delivery_id=str(delivery.pk), payload=delivery.payload
        )
    except channels.SendFailed as exc:
        error, status = exc.message, exc.status
    except Exception as exc:  # a bug, or something the senders did not foresee: logged, retried
        log.exception("notification %s: unexpected error", delivery_id)
        error = f"{type(exc).__name__}: {exc}"
    finished = timezone.now()
    error = error[:ERROR_MAX]
    NotificationAttempt(
        delivery=delivery,
        number=delivery.attempts,
        started_at=started,
        duration_ms=max(0, int((finished - started).total_seconds() * 1000)),
        ok=not error,
        response_status=status if status is not None and 0 <= status < 1000 else None,
        error=error,
    ).save()
    mine = NotificationDelivery.objects.filter(pk=delivery.pk, claimed_until=until)
    if not error:
        mine.update(
            status=DeliveryStatus.SENT,
            sent_at=finished,
            claimed_until=None,
            last_error="",
            updated_at=finished,
        )
        return "sent"
    if delivery.attempts >= delivery.max_attempts:
        mine.update(
            status=DeliveryStatus.FAILED, claimed_until=None, last_error=error, updated_at=finished
        )
        log.warning(
            "notification %s to %s failed after %d attempts: %s",
            delivery_id,
            delivery.channel_name,
            delivery.attempts,
            error,
        )
        return "failed"
    wait = _backoff_s(delivery.attempts)
    mine.update(
        status=DeliveryStatus.RETRYING,
        claimed_until=None,
        last_error=error,
        next_attempt_at=finished + timedelta(seconds=wait),
        updated_at=finished,
    )
    _dispatch(delivery_id, countdown=wait)
    return "retrying"


# --- the periodic sweep ----------------------------------------------------------------------


def notifications_sweep(now: datetime | None = None) -> int:
    """Hand over again the deliveries whose hand-off was lost (due for a while, no live claim:
    a process died, a broker was away, an attempt died mid-send), and announce the reopened
    incidents still open past the flap cool-down. The number of deliveries handed over or
    queued."""
    now = now or timezone.now()
    lost = list(
        NotificationDelivery.objects.filter(
            status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING],
            next_attempt_at__lte=now - timedelta(seconds=LOST_AFTER_S),
            attempts__lt=F("max_attempts"),
        )
        .filter(Q(claimed_until__isnull=True) | Q(claimed_until__lt=now))
        .order_by("next_attempt_at")
        .values_list("pk", flat=True)[:SWEEP_LIMIT]
    )
    for delivery_id in lost:
        _dispatch(str(delivery_id))
    # A delivery whose last attempt died mid-send with no attempt left is failed, not pending.
    NotificationDelivery.objects.filter(
        status__in=[DeliveryStatus.PENDING, DeliveryStatus.RETRYING],
        attempts__gte=F("max_attempts"),
        claimed_until__lt=now,
    ).update(
        status=DeliveryStatus.FAILED,
        claimed_until=None,
        last_error="the last attempt did not finish (its process stopped)",
        updated_at=now,
    )
    return len(lost) + reopened_announce(now)


def reopened_announce(now: datetime) -> int:
    """Reopened incidents still open ``BREAKWATER_NOTIFY_FLAP_S`` after reopening, while the
    channels were last told they were resolved: announced now, once."""
    cooled = now - timedelta(seconds=settings.BREAKWATER_NOTIFY_FLAP_S)
    queued = 0
    candidates = Incident.objects.filter(notified=_RESOLVED).exclude(status=IncidentStatus.RESOLVED)
    for incident in candidates[:SWEEP_LIMIT]:
        reopen = (
            IncidentEvent.objects.filter(incident=incident, kind="reopened")
            .order_by("-at", "-id")
            .first()
        )
        if reopen is None or reopen.at > cooled:
            continue
        with transaction.atomic():
            won = (
                Incident.objects.filter(pk=incident.pk, notified=_RESOLVED)
                .exclude(status=IncidentStatus.RESOLVED)
                .update(notified=_OPEN)
            )
            if won:
                queued += incident_announce(
                    incident=incident, trigger=reopen, event=DeliveryEvent.OPENED, reopened=True
                )
    return queued
