"""Notification channels over the API: list with recent deliveries, create or update (the config
file's fields, validated the same way), the delivery log, and a test send."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from django.test import Client

from agents.access.services import api_key_create
from agents.engine import engine_shutdown
from core.models import AuditEvent
from incidents.models import NotificationChannel, NotificationDelivery
from tests.incidents.receivers import http_receiver, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

HOOK = {"name": "ops-hook", "kind": "webhook", "url": "https://ops.example.com/hook"}


@pytest.fixture
def admin(settings: Any) -> Iterator[Client]:
    settings.EMBEDDED = True  # test sends run on the in-process worker (nothing listens)
    key = api_key_create(name="owner", scopes=["admin"]).plaintext
    yield Client(headers={"Authorization": f"Bearer {key}"})
    async_to_sync(engine_shutdown)()
    from core.worker import current_worker

    worker = current_worker()
    if worker is not None:
        async_to_sync(worker.stop)()


def _post(client: Client, path: str, body: Any = None) -> Any:
    return client.post(path, body, content_type="application/json")


def test_a_channel_is_created_then_updated_by_name_and_each_change_is_audited(
    admin: Client,
) -> None:
    created = _post(admin, "/api/v1/notifications", HOOK | {"secret_env": "HOOK_SECRET"})
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["name"] == "ops-hook"
    assert body["secret_env"] == "HOOK_SECRET"
    assert body["min_severity"] == "minor"
    assert body["last_delivery"] is None
    assert body["recent"] == []
    updated = _post(admin, "/api/v1/notifications", HOOK | {"min_severity": "major"})
    assert updated.status_code == 200
    assert updated.json()["min_severity"] == "major"
    assert updated.json()["secret_env"] is None  # the body is the whole channel
    same = _post(admin, "/api/v1/notifications", HOOK | {"min_severity": "major"})
    assert same.status_code == 200
    actions = list(
        AuditEvent.objects.filter(target_type="notificationchannel")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["notificationchannel_create", "notificationchannel_update"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "kind": "webhook"}, "exactly one of url and url_env"),
        ({"name": "x", "kind": "email"}, "an email channel needs at least one address"),
        ({"name": "x", "kind": "email", "to": ["not-an-address"]}, "to.0"),
        ({"name": "x", "kind": "slack", "url": "ftp://x.example.com"}, "http(s) URL"),
        ({"name": "x", "kind": "webhook", "url": "http://169.254.169.254/latest"}, "BREAKWATER_PROVIDER_ALLOW_HOSTS"),
        ({"name": "x", "kind": "webhook", "url": "https://a.example.com", "to": ["a@b.co"]}, "only allowed for an email channel"),
        ({"name": "Bad Name", "kind": "webhook", "url": "https://a.example.com"}, "name"),
        ({"name": "x", "kind": "pager", "url": "https://a.example.com"}, "kind"),
    ],
)  # fmt: skip
def test_a_bad_channel_is_refused_naming_what_is_wrong(
    admin: Client, body: dict[str, Any], message: str
) -> None:
    response = _post(admin, "/api/v1/notifications", body)
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]
    assert not NotificationChannel.objects.exists()


def test_the_list_shows_each_channel_with_its_recent_deliveries(admin: Client) -> None:
    with http_receiver([200]) as hook:
        _post(admin, "/api/v1/notifications", HOOK | {"url": hook.url})
        sent = _post(admin, "/api/v1/notifications/ops-hook/test")
        assert sent.status_code == 202
        delivery = sent.json()
        assert delivery["event"] == "test"
        assert delivery["attempt_log"] == [] or delivery["status"] == "sent"
        wait_until(lambda: NotificationDelivery.objects.filter(status="sent").exists())
    assert len(hook.accepted) == 1
    listed = admin.get("/api/v1/notifications").json()
    assert listed["next"] is None
    (channel,) = listed["items"]
    assert channel["last_delivery"]["id"] == delivery["id"]
    assert [d["id"] for d in channel["recent"]] == [delivery["id"]]
    assert channel["last_delivery"]["status"] == "sent"
    assert [
        (a["number"], a["ok"], a["response_status"]) for a in channel["recent"][0]["attempt_log"]
    ] == [(1, True, 200)]
    log = admin.get("/api/v1/notifications/deliveries?channel=ops-hook").json()
    assert [d["id"] for d in log["items"]] == [delivery["id"]]
    assert NotificationDelivery.objects.get().actor.startswith("apikey:bw_")


def test_the_delivery_log_pages_newest_first(admin: Client) -> None:
    with http_receiver([200]) as hook:
        _post(admin, "/api/v1/notifications", HOOK | {"url": hook.url})
        ids = [_post(admin, "/api/v1/notifications/ops-hook/test").json()["id"] for _ in range(3)]
        wait_until(lambda: NotificationDelivery.objects.filter(status="sent").count() == 3)
    first = admin.get("/api/v1/notifications/deliveries?limit=2").json()
    assert [d["id"] for d in first["items"]] == ids[::-1][:2]
    second = admin.get(f"/api/v1/notifications/deliveries?limit=2&after={first['next']}").json()
    assert [d["id"] for d in second["items"]] == [ids[0]]
    assert second["next"] is None
    bad = admin.get("/api/v1/notifications/deliveries?after=nonsense")
    assert bad.status_code == 422


def test_a_test_to_an_unknown_channel_is_404(admin: Client) -> None:
    response = _post(admin, "/api/v1/notifications/ghost/test")
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "notification channel 'ghost' does not exist"
