"""Notifications against real local receivers (an HTTP endpoint, an SMTP server), through the path
production takes: ``incident_open`` and friends queue deliveries on commit, the Celery task runs on
the in-process worker (embedded mode), and failed attempts are handed over again after the
backoff (here 50 ms, 100 ms, ...)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.runtime.state import BreakerState, Transition
from incidents import notifications
from incidents.channels import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature_valid,
)
from incidents.events import transition_to_incident
from incidents.models import (
    DeliveryStatus,
    Incident,
    NotificationAttempt,
    NotificationChannel,
    NotificationDelivery,
)
from incidents.services import incident_change, incident_open, incident_resolve_by_key
from tests.incidents.receivers import http_receiver, smtp_receiver, wait_until

SECRET = "s3cret-signing-key"


@pytest.fixture
def deliveries(settings: Any) -> Iterator[None]:
    """Embedded mode (the in-process worker runs the deliveries), fast backoff, no jitter."""
    settings.EMBEDDED = True
    settings.BREAKWATER_NOTIFY_BACKOFF_S = 0.05
    settings.BREAKWATER_NOTIFY_JITTER = 0
    settings.BREAKWATER_NOTIFY_TIMEOUT_S = 5
    settings.BREAKWATER_CONSOLE_URL = "https://breakwater.example.com"
    yield
    from core.worker import current_worker

    worker = current_worker()
    if worker is not None:
        asyncio.run(worker.stop())


def _open(key: str = "breaker:agent:support", severity: str = "critical") -> Incident:
    incident, _ = incident_open(
        kind="breaker_open",
        dedup_key=key,
        title="Circuit breaker open: agent support",
        message="breaker opened (5 consecutive failures)",
        severity=severity,
        agent_name="support",
    )
    return incident


def _finished(channel: str) -> NotificationDelivery | None:
    return NotificationDelivery.objects.filter(
        channel_name=channel, status__in=[DeliveryStatus.SENT, DeliveryStatus.FAILED]
    ).first()


@pytest.mark.django_db(transaction=True)
def test_a_webhook_failing_three_times_gets_the_message_on_the_fourth_attempt_once(
    deliveries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    with http_receiver([500, 500, 500, 200]) as hook:
        NotificationChannel.objects.create(
            name="ops-hook", kind="webhook", url=hook.url, secret_env="HOOK_SECRET"
        )
        incident = _open()
        delivery = wait_until(lambda: _finished("ops-hook"))

    assert delivery.status == DeliveryStatus.SENT
    assert delivery.attempts == 4
    log = list(NotificationAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.number, a.ok, a.response_status) for a in log] == [
        (1, False, 500),
        (2, False, 500),
        (3, False, 500),
        (4, True, 200),
    ]
    assert all("HTTP 500" in a.error and "receiver says no" in a.error for a in log[:3])
    assert log[3].error == ""
    # Four requests, one delivery id, one accepted: nothing was sent twice.
    assert len(hook.requests) == 4
    assert {r.headers[DELIVERY_HEADER] for r in hook.requests} == {str(delivery.pk)}
    assert len(hook.accepted) == 1
    for request in hook.requests:
        assert signature_valid(
            SECRET.encode(),
            timestamp=request.headers[TIMESTAMP_HEADER],
            body=request.body,
            header=request.headers[SIGNATURE_HEADER],
        )
        assert not signature_valid(
            b"another-secret",
            timestamp=request.headers[TIMESTAMP_HEADER],
            body=request.body,
            header=request.headers[SIGNATURE_HEADER],
        )
    # The recipe of docs/OPERATIONS.md, computed here by hand.
    accepted = hook.accepted[0]
    material = accepted.headers[TIMESTAMP_HEADER].encode() + b"." + accepted.body
    expected = hmac.new(SECRET.encode(), material, hashlib.sha256).hexdigest()
    assert accepted.headers[SIGNATURE_HEADER] == f"sha256={expected}"
    body = json.loads(accepted.body)
    assert body["delivery_id"] == str(delivery.pk)
    assert body["event"] == "opened"
    assert body["incident"] == {
        "id": incident.pk,
        "kind": "breaker_open",
        "title": "Circuit breaker open: agent support",
        "severity": "critical",
        "status": "open",
        "agent": "support",
        "opened_at": incident.opened_at.isoformat(),
        "resolved_at": None,
        "url": f"https://breakwater.example.com/incidents/{incident.pk}/",
    }
    assert [e["kind"] for e in body["timeline"]] == ["opened"]
    # A repeated hand-off of a sent delivery sends nothing.
    assert notifications.delivery_attempt(str(delivery.pk)) == "skipped"


@pytest.mark.django_db(transaction=True)
def test_a_receiver_that_never_accepts_ends_failed_after_the_last_attempt(
    deliveries: None, settings: Any
) -> None:
    settings.BREAKWATER_NOTIFY_ATTEMPTS = 3
    with http_receiver([503]) as hook:
        NotificationChannel.objects.create(name="ops-hook", kind="webhook", url=hook.url)
        _open()
        delivery = wait_until(lambda: _finished("ops-hook"))
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 3
    assert delivery.last_error.startswith("HTTP 503")
    assert len(hook.requests) == 3
    assert SIGNATURE_HEADER not in hook.requests[0].headers  # no secret_env: unsigned


@pytest.mark.django_db(transaction=True)
def test_a_redirect_is_not_followed(deliveries: None, settings: Any) -> None:
    settings.BREAKWATER_NOTIFY_ATTEMPTS = 1
    with (
        http_receiver([200]) as elsewhere,
        http_receiver([302], location=elsewhere.url.replace("127.0.0.1", "localhost")) as hook,
    ):
        NotificationChannel.objects.create(name="ops-hook", kind="webhook", url=hook.url)
        _open()
        delivery = wait_until(lambda: _finished("ops-hook"))
    assert delivery.status == DeliveryStatus.FAILED
    assert "HTTP 302: redirect to localhost not followed" in delivery.last_error
    assert elsewhere.requests == []


@pytest.mark.django_db(transaction=True)
def test_a_slack_channel_gets_an_incoming_webhook_message_from_its_url_env(
    deliveries: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with http_receiver([200]) as slack:
        monkeypatch.setenv("SLACK_WEBHOOK_URL", slack.url)
        NotificationChannel.objects.create(
            name="oncall-slack", kind="slack", url_env="SLACK_WEBHOOK_URL", min_severity="major"
        )
        incident = _open()
        wait_until(lambda: _finished("oncall-slack"))
    (request,) = slack.requests
    message = json.loads(request.body)
    assert set(message) == {"text", "blocks"}
    assert message["text"] == (
        f"[CRITICAL] opened: Circuit breaker open: agent support (#{incident.pk})"
    )
    kinds = [block["type"] for block in message["blocks"]]
    assert kinds == ["section", "section", "section", "context"]
    assert message["blocks"][0]["text"]["type"] == "mrkdwn"
    fields = [f["text"] for f in message["blocks"][1]["fields"]]
    assert "*Severity*\ncritical" in fields
    assert "*Agent*\nsupport" in fields
    link = message["blocks"][3]["elements"][0]["text"]
    assert link == f"<https://breakwater.example.com/incidents/{incident.pk}/|Open in the console>"


@pytest.mark.django_db(transaction=True)
def test_an_email_refused_three_times_by_smtp_is_delivered_on_the_fourth_attempt(
    deliveries: None, settings: Any
) -> None:
    with smtp_receiver(failures=3) as (smtp, port):
        settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
        settings.EMAIL_HOST = "127.0.0.1"
        settings.EMAIL_PORT = port
        settings.EMAIL_TIMEOUT = 5
        NotificationChannel.objects.create(
            name="ops-mail", kind="email", to=["ops@example.com", "lead@example.com"]
        )
        incident = _open()
        delivery = wait_until(lambda: _finished("ops-mail"))
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.attempts == 4
    log = list(NotificationAttempt.objects.filter(delivery=delivery).order_by("number"))
    assert [(a.ok, a.response_status) for a in log] == [
        (False, 451),
        (False, 451),
        (False, 451),
        (True, 250),
    ]
    assert "SMTP 451" in log[0].error
    assert smtp.tries == 4
    (message,) = smtp.messages
    assert smtp.recipients == [["ops@example.com", "lead@example.com"]]
    assert message[DELIVERY_HEADER] == str(delivery.pk)
    assert message["Subject"].replace("\r\n", "") == (  # unfolded
        f"[Breakwater] [CRITICAL] opened: Circuit breaker open: agent support (#{incident.pk})"
    )
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    text = payload.decode()
    assert f"https://breakwater.example.com/incidents/{incident.pk}/" in text


@pytest.mark.django_db(transaction=True)
def test_an_unset_secret_env_fails_the_attempt_naming_the_variable(
    deliveries: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BREAKWATER_NOTIFY_ATTEMPTS = 1
    monkeypatch.delenv("HOOK_SECRET", raising=False)
    with http_receiver([200]) as hook:
        NotificationChannel.objects.create(
            name="ops-hook", kind="webhook", url=hook.url, secret_env="HOOK_SECRET"
        )
        _open()
        delivery = wait_until(lambda: _finished("ops-hook"))
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.last_error == "secret_env: environment variable HOOK_SECRET is not set"
    assert hook.requests == []  # never sent unsigned


@pytest.mark.django_db(transaction=True)
def test_a_send_test_reaches_the_channel(deliveries: None) -> None:
    with http_receiver([200]) as hook:
        NotificationChannel.objects.create(name="ops-hook", kind="webhook", url=hook.url)
        delivery = notifications.notification_test(name="ops-hook", actor="user:alice")
        wait_until(lambda: _finished("ops-hook"))
    body = json.loads(hook.requests[0].body)
    assert body["event"] == "test"
    assert body["incident"] is None
    assert body["delivery_id"] == str(delivery.pk)
    assert "user:alice" in body["message"]


@pytest.mark.django_db(transaction=True)
def test_the_sweep_hands_over_a_delivery_whose_hand_off_was_lost(deliveries: None) -> None:
    with http_receiver([200]) as hook:
        channel = NotificationChannel.objects.create(name="ops-hook", kind="webhook", url=hook.url)
        # Recorded, never handed to a worker (its process stopped right after the commit).
        lost = NotificationDelivery.objects.create(
            channel=channel,
            channel_name="ops-hook",
            event="test",
            payload={"event": "test", "incident": None, "timeline": [], "message": "m"},
            next_attempt_at=timezone.now() - timedelta(minutes=1),
        )
        assert notifications.notifications_sweep() == 1
        wait_until(lambda: _finished("ops-hook"))
    assert [r.headers[DELIVERY_HEADER] for r in hook.requests] == [str(lost.pk)]
    assert notifications.notifications_sweep() == 0  # sent: nothing left to hand over


# --- which events are announced, and how often -------------------------------------------------


def _events(channel: str = "ops-hook") -> list[str]:
    return list(
        NotificationDelivery.objects.filter(channel_name=channel)
        .order_by("created_at", "id")
        .values_list("event", flat=True)
    )


@pytest.fixture
def channels(db: None) -> None:
    NotificationChannel.objects.create(name="ops-hook", kind="webhook", url="http://hook.test/x")
    NotificationChannel.objects.create(
        name="pager", kind="webhook", url="http://pager.test/x", min_severity="critical"
    )
    NotificationChannel.objects.create(
        name="off", kind="webhook", url="http://off.test/x", enabled=False
    )


def test_opening_escalating_and_resolving_notify_each_matching_channel_once(
    channels: None, settings: Any
) -> None:
    incident = _open(severity="major")
    _open(severity="major")  # a recurrence: the same incident, nothing new to say
    _open(severity="minor")  # a lower severity changes nothing
    _open(severity="critical")  # escalates
    incident_resolve_by_key(dedup_key="breaker:agent:support", message="closed")
    assert _events("ops-hook") == ["opened", "escalated", "resolved"]
    # critical only: it hears of the incident when it escalates to critical.
    assert _events("pager") == ["escalated", "resolved"]
    assert _events("off") == []
    incident.refresh_from_db()
    assert incident.severity == "critical"
    assert [e.kind for e in incident.events.all()] == [
        "opened",
        "recurred",
        "recurred",
        "recurred",
        "severity",
        "resolved",
    ]


def test_changing_an_incident_by_hand_announces_a_raise_and_a_resolution(channels: None) -> None:
    incident = _open(severity="minor")
    incident_change(
        incident_id=incident.pk, changes={"severity": "major"}, allowed=frozenset(), actor="a"
    )
    incident_change(
        incident_id=incident.pk, changes={"severity": "minor"}, allowed=frozenset(), actor="a"
    )
    incident_change(
        incident_id=incident.pk, changes={"status": "acknowledged"}, allowed=frozenset(), actor="a"
    )
    incident_change(
        incident_id=incident.pk, changes={"status": "resolved"}, allowed=frozenset(), actor="a"
    )
    assert _events("ops-hook") == ["opened", "escalated", "resolved"]


def _flip(to: BreakerState, at: float) -> None:
    source = BreakerState.CLOSED if to == BreakerState.OPEN else BreakerState.HALF_OPEN
    transition_to_incident(Transition("agent:support", source, to, at, "flapping"))


def test_a_breaker_flapping_ten_times_in_a_minute_sends_at_most_two_messages_per_channel(
    channels: None,
) -> None:
    for second in range(0, 60, 6):
        _flip(BreakerState.OPEN, second)
        _flip(BreakerState.CLOSED, second + 3)
    incident = Incident.objects.get()  # one incident, reopened nine times
    assert incident.status == "resolved"
    assert [e.kind for e in incident.events.all()].count("reopened") == 9
    assert _events("ops-hook") == ["opened", "resolved"]
    assert _events("pager") == ["opened", "resolved"]


def test_a_reopened_incident_still_open_after_the_cool_down_is_announced_once(
    channels: None, settings: Any
) -> None:
    _flip(BreakerState.OPEN, 0)
    _flip(BreakerState.CLOSED, 1)
    _flip(BreakerState.OPEN, 2)  # reopened, silently
    assert _events() == ["opened", "resolved"]
    now = timezone.now()
    # The periodic sweep's second half (its first hands lost deliveries over again).
    assert notifications.reopened_announce(now) == 0  # still within the cool-down
    later = now + timedelta(seconds=settings.BREAKWATER_NOTIFY_FLAP_S + 1)
    assert notifications.reopened_announce(later) == 2  # ops-hook and pager
    assert notifications.reopened_announce(later) == 0  # once
    assert _events() == ["opened", "resolved", "opened"]
    reopened = NotificationDelivery.objects.filter(channel_name="ops-hook").order_by("-created_at")[
        0
    ]
    assert reopened.payload["reopened"] is True
    # The channels were told it is open again: its resolution is announced.
    _flip(BreakerState.CLOSED, 3)
    assert _events() == ["opened", "resolved", "opened", "resolved"]


def test_a_key_opening_after_the_cool_down_is_a_new_incident_announced_again(
    channels: None, settings: Any
) -> None:
    _open()
    incident_resolve_by_key(dedup_key="breaker:agent:support", message="closed")
    Incident.objects.update(resolved_at=timezone.now() - timedelta(hours=1))
    _open()
    assert Incident.objects.count() == 2
    assert _events() == ["opened", "resolved", "opened"]


# --- the claim ---------------------------------------------------------------------------------


def test_a_delivery_is_claimed_by_one_attempt_at_a_time_and_a_dead_attempt_is_retaken(
    channels: None,
) -> None:
    _open()
    delivery = NotificationDelivery.objects.get(channel_name="ops-hook")
    now = timezone.now()
    assert notifications._claim(str(delivery.pk), now) is not None
    assert notifications._claim(str(delivery.pk), now) is None  # another attempt is in flight
    # That attempt died mid-send: once its claim has lapsed, the sweep hands the row over again.
    late = now + timedelta(minutes=5)
    assert notifications._claim(str(delivery.pk), late) is not None
    delivery.refresh_from_db()
    assert delivery.attempts == 2
    assert delivery.status == DeliveryStatus.PENDING


def test_the_sweep_fails_a_delivery_whose_last_attempt_died(channels: None, settings: Any) -> None:
    settings.EMBEDDED = True  # what the sweep hands over runs here (and finds nothing to do)
    settings.BREAKWATER_NOTIFY_ATTEMPTS = 1
    _open()
    delivery = NotificationDelivery.objects.get(channel_name="ops-hook")
    now = timezone.now()
    assert notifications._claim(str(delivery.pk), now) is not None
    notifications.notifications_sweep(now + timedelta(minutes=5))
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert "did not finish" in delivery.last_error


def test_a_channel_hears_of_a_timeline_entry_only_once(channels: None) -> None:
    from django.db import IntegrityError, transaction

    _open()
    first = NotificationDelivery.objects.get(channel_name="ops-hook")
    with pytest.raises(IntegrityError), transaction.atomic():
        NotificationDelivery.objects.create(
            channel=first.channel,
            channel_name="ops-hook",
            incident=first.incident,
            trigger=first.trigger,
            event="opened",
        )
