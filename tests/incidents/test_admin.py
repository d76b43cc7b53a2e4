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
