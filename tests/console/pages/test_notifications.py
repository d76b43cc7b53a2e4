"""The notifications page: channels with where they send and their last delivery, the delivery log
(newest first, attempts, errors, pages), and "Send test" for admins only."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.utils import timezone

from core.models import AuditEvent
from incidents.models import NotificationAttempt, NotificationChannel, NotificationDelivery
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


def _channel(name: str = "ops-hook", **fields: Any) -> NotificationChannel:
    values: dict[str, Any] = {
        "kind": "webhook",
        "url": "https://hooks.example.com/path?token=abc",
        "secret_env": "HOOK_SECRET",
    }
    return NotificationChannel.objects.create(name=name, **(values | fields))


def _delivery(channel: NotificationChannel, *, status: str = "sent", attempts: int = 1) -> Any:
    now = timezone.now()
    delivery = NotificationDelivery.objects.create(
        channel=channel,
        channel_name=channel.name,
        event="opened",
        status=status,
        attempts=attempts,
        sent_at=now if status == "sent" else None,
        last_error="" if status == "sent" else "HTTP 500 Internal Server Error",
    )
    for number in range(1, attempts + 1):
        ok = status == "sent" and number == attempts
        NotificationAttempt(
            delivery=delivery,
            number=number,
            started_at=now,
            ok=ok,
            response_status=200 if ok else 500,
            error="" if ok else f"HTTP 500 attempt {number}",
        ).save()
    return delivery


def test_a_viewer_sees_channels_and_the_log_but_no_send_test_button(client_as: ClientAs) -> None:
    hook = _channel()
    _channel("oncall-slack", kind="slack", url="", url_env="SLACK_URL", secret_env="")
    _channel(
        "ops-mail",
        kind="email",
        url="",
        secret_env="",
        to=["ops@example.com"],
        min_severity="critical",
    )
    _delivery(hook, status="failed", attempts=3)
    page = client_as("viewer").get("/notifications/").content.decode()
    assert '<tr data-channel="ops-hook">' in page
    assert "<code>https://hooks.example.com</code>" in page  # the host, not the token
    assert "token=abc" not in page
    assert "<code>$SLACK_URL</code>" in page
    assert "<code>ops@example.com</code>" in page
    assert "critical and above" in page
    assert "signed with $HOOK_SECRET" in page
    assert 'data-status="failed"' in page
    assert "HTTP 500 attempt 3" in page
    assert "3 / 5" in page
    assert "Send test" not in page


def test_the_page_is_in_the_navigation(client_as: ClientAs) -> None:
    page = client_as("viewer").get("/notifications/").content.decode()
    assert '<a href="/notifications/" aria-current="page">Notifications</a>' in page


def test_the_log_is_newest_first_filtered_by_channel_and_paginated(
    settings: Any, client_as: ClientAs
) -> None:
    from console.pages import notifications

    hook, other = _channel(), _channel("other")
    first = _delivery(hook)
    second = _delivery(other)
    third = _delivery(hook)
    client = client_as("viewer")
    page = client.get("/notifications/").content.decode()
    assert page.index(str(third.pk)) < page.index(str(second.pk)) < page.index(str(first.pk))
    page = client.get("/notifications/?channel=other").content.decode()
    assert str(second.pk) in page
    assert str(first.pk) not in page
    notifications.PAGE_SIZE, size = 2, notifications.PAGE_SIZE
    try:
        page = client.get("/notifications/").content.decode()
        assert str(first.pk) not in page
        found = re.search(r'href="\?([^"]+)" rel="next"', page)
        assert found is not None
        older = found.group(1).replace("&amp;", "&")
        page = client.get(f"/notifications/?{older}").content.decode()
        assert str(first.pk) in page
        assert str(third.pk) not in page
    finally:
        notifications.PAGE_SIZE = size


def test_a_bad_cursor_is_a_clear_400(client_as: ClientAs) -> None:
    response = client_as("viewer").get("/notifications/?after=nonsense")
    assert response.status_code == 400
    assert "after: invalid cursor" in response.content.decode()


@pytest.mark.parametrize("count", [1, 60])
def test_the_page_takes_the_same_few_queries_whatever_the_number_of_channels_and_deliveries(
    count: int, django_assert_num_queries: Any, client_as: ClientAs
) -> None:
    for number in range(count):
        channel = _channel(f"hook-{number}")
        _delivery(channel, status="failed", attempts=3)
    client = client_as("admin")
    client.get("/notifications/")  # the session and the role, read once
    # session, user, role; channels + their latest delivery; the log page + its attempts
    with django_assert_num_queries(7):
        assert client.get("/notifications/").status_code == 200


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_send_test_is_403_below_admin(role: str, client_as: ClientAs) -> None:
    _channel()
    assert client_as(role).post("/notifications/ops-hook/test/").status_code == 403
    assert not NotificationDelivery.objects.exists()


def test_an_admin_sends_a_test_and_it_is_queued_and_audited(
    settings: Any, client_as: ClientAs
) -> None:
    _channel()
    client = client_as("admin")
    page = client.get("/notifications/").content.decode()
    assert "Send test" in page
    response = client.post("/notifications/ops-hook/test/", HTTP_HX_REQUEST="true")
    assert response.status_code == 202
    delivery = NotificationDelivery.objects.get()
    assert delivery.event == "test"
    assert delivery.actor == "user:admin-user"
    fragment = response.content.decode()
    assert f'data-delivery="{delivery.pk}"' in fragment
    assert f'hx-get="/notifications/deliveries/{delivery.pk}/"' in fragment  # follows it
    audit = AuditEvent.objects.get(action="notification_test")
    assert audit.actor == "user:admin-user"
    # Without htmx: back to the page with a message.
    response = client.post("/notifications/ops-hook/test/")
    assert response.status_code == 302
    assert response["Location"] == "/notifications/"


def test_the_followed_delivery_stops_polling_once_it_is_done(client_as: ClientAs) -> None:
    delivery = _delivery(_channel(), status="sent", attempts=2)
    fragment = client_as("viewer").get(f"/notifications/deliveries/{delivery.pk}/").content.decode()
    assert 'data-status="sent"' in fragment
    assert "after 2 attempts" in fragment
    assert "hx-get" not in fragment


def test_a_test_to_an_unknown_channel_says_so(client_as: ClientAs) -> None:
    response = client_as("admin").post("/notifications/ghost/test/", HTTP_HX_REQUEST="true")
    assert response.status_code == 404
    assert "notification channel &#x27;ghost&#x27; does not exist" in response.content.decode()
