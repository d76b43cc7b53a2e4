"""Incidents are read-only in the admin: their workflow is the API's audited incident_change."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from incidents.models import Incident, IncidentStatus
from incidents.services import incident_open

pytestmark = pytest.mark.django_db

INCIDENTS = "/admin/incidents/incident/"


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)  # no password to hash
    return client


def test_incidents_cannot_be_added_changed_or_deleted_in_the_admin(admin_client: Client) -> None:
    incident, _ = incident_open(kind="manual", dedup_key="k", title="down", message="it broke")
    url = f"{INCIDENTS}{incident.pk}/"
    assert admin_client.get(f"{INCIDENTS}add/").status_code == 403
    change = {"kind": "manual", "dedup_key": "k", "title": "t", "status": "resolved"}
    assert admin_client.post(f"{url}change/", change).status_code == 403
    assert admin_client.post(f"{url}delete/", {"post": "yes"}).status_code == 403
    page = admin_client.get(f"{url}change/")
    assert page.status_code == 200
    assert "it broke" in page.content.decode()  # the timeline, to read
    incident.refresh_from_db()
    assert (incident.title, incident.status) == ("down", IncidentStatus.OPEN)
    assert Incident.objects.count() == 1


CHANNELS = "/admin/incidents/notificationchannel/"


def test_a_channel_added_in_the_admin_is_checked_as_apply_checks_it_and_audited(
    admin_client: Client,
) -> None:
    from core.models import AuditEvent
    from incidents.models import NotificationChannel

    form = {
        "name": "ops-mail",
        "kind": "email",
        "url": "",
        "url_env": "",
        "secret_env": "",
        "to": "ops@example.com\nlead@example.com",
        "min_severity": "major",
        "enabled": "on",
    }
    refused = admin_client.post(f"{CHANNELS}add/", form | {"url": "https://a.example.com"})
    assert refused.status_code == 200
    assert "not allowed for an email channel" in refused.content.decode()
    assert not NotificationChannel.objects.exists()
    assert admin_client.post(f"{CHANNELS}add/", form).status_code == 302
    channel = NotificationChannel.objects.get()
    assert channel.to == ["ops@example.com", "lead@example.com"]
    audit = AuditEvent.objects.get(action="notificationchannel_create")
    assert audit.actor == "user:admin"


def test_the_delivery_log_is_read_only_in_the_admin(admin_client: Client) -> None:
    assert admin_client.get("/admin/incidents/notificationdelivery/add/").status_code == 403
    assert admin_client.get("/admin/incidents/notificationdelivery/").status_code == 200
