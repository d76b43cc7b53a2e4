"""The API keys page (admin only): list without secrets, create shown once, revoke."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.access.keys import verify_key
from agents.access.services import api_key_create, api_key_revoke
from agents.models import Agent, ApiKey
from core.models import AuditEvent
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


def _agent(name: str) -> Agent:
    return Agent.objects.create(name=name, model="m")


def test_the_list_shows_keys_without_secrets_and_their_state(client_as: ClientAs) -> None:
    active = api_key_create(name="ci", scopes=["read"])
    revoked = api_key_create(name="old", scopes=["execute"])
    api_key_revoke(key_id=revoked.api_key.pk, actor="test")
    expired = api_key_create(
        name="temp", scopes=["read"], expires_at=timezone.now() - timedelta(days=1)
    )
    page = client_as("admin").get("/keys/").content.decode()
    for created in (active, revoked, expired):
        assert created.api_key.prefix in page
        assert created.plaintext not in page
        assert created.api_key.secret_hash not in page
    assert 'data-state="active"' in page
    assert 'data-state="revoked"' in page
    assert 'data-state="expired"' in page


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_the_page_and_its_forged_posts_are_403_below_admin(role: str, client_as: ClientAs) -> None:
    key = api_key_create(name="ci", scopes=["read"])
    client = client_as(role)
    assert client.get("/keys/").status_code == 403
    assert client.post("/keys/", {"name": "x", "scopes": ["admin"]}).status_code == 403
    assert client.post(f"/keys/{key.api_key.pk}/revoke/", {"reason": "x"}).status_code == 403
    assert ApiKey.objects.count() == 1
    key.api_key.refresh_from_db()
    assert key.api_key.revoked_at is None


def test_a_created_key_is_shown_once_in_the_answer_itself_and_works(client_as: ClientAs) -> None:
    _agent("support")
    client = client_as("admin")
    response = client.post(
        "/keys/",
        {
            "name": "partner",
            "scopes": ["read", "execute"],
            "agents": ["support"],
            "rate_limit_rpm": "60",
            "rate_limit_tpm": "",
            "expires_at": (timezone.now() + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M"),
        },
    )
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    page = response.content.decode()
    key = ApiKey.objects.get(name="partner")
    plaintext = page.split('<code id="new-key" class="secret">')[1].split("</code>")[0]
    assert verify_key(plaintext, key.secret_hash)
    assert 'data-copy="#new-key"' in page
    assert key.scopes == "read,execute"
    assert list(key.agents.values_list("name", flat=True)) == ["support"]
    assert key.rate_limit_rpm == 60
    assert key.expires_at is not None
    audit = AuditEvent.objects.get(action="apikey_create", target_id=key.prefix)
    assert audit.actor == "user:admin-user"
    # Never again: not on the list, not in a message, not on reload.
    again = client.get("/keys/").content.decode()
    assert plaintext not in again
    assert key.prefix in again


def test_wrong_fields_are_named_and_nothing_is_created(client_as: ClientAs) -> None:
    response = client_as("admin").post(
        "/keys/",
        {
            "name": "",
            "scopes": ["superuser"],
            "agents": ["ghost"],
            "rate_limit_rpm": "fast",
            "expires_at": "2001-01-01T00:00",
        },
    )
    assert response.status_code == 422
    page = response.content.decode()
    assert "Expires (UTC): must be in the future" in page
    assert "Requests per minute: must be a whole number" in page
    assert not ApiKey.objects.exists()
    response = client_as("admin", "admin2").post(
        "/keys/", {"name": "x", "scopes": ["superuser"], "agents": ["ghost"]}
    )
    page = response.content.decode()
    assert "Scopes: unknown scope &#x27;superuser&#x27;" in page
    assert "Agents: unknown agent &#x27;ghost&#x27;" in page
    assert not ApiKey.objects.exists()


def test_revoking_needs_a_reason_and_is_audited_with_it(client_as: ClientAs) -> None:
    created = api_key_create(name="leaked", scopes=["read"])
    client = client_as("admin")
    response = client.post(f"/keys/{created.api_key.pk}/revoke/", {"reason": ""}, follow=True)
    assert "Reason: say why" in response.content.decode()
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is None
    response = client.post(
        f"/keys/{created.api_key.pk}/revoke/", {"reason": "posted in a ticket"}, follow=True
    )
    assert f"API key {created.api_key.prefix} (leaked) revoked" in response.content.decode()
    created.api_key.refresh_from_db()
    assert created.api_key.revoked_at is not None
    audit = AuditEvent.objects.get(action="apikey_revoke", target_id=created.api_key.prefix)
    assert (audit.actor, audit.reason) == ("user:admin-user", "posted in a ticket")


def test_revoke_asks_for_confirmation_and_has_a_labelled_reason(client_as: ClientAs) -> None:
    created = api_key_create(name="ci", scopes=["read"])
    page = client_as("admin").get("/keys/").content.decode()
    assert 'data-confirm="Revoke ' in page
    assert f'<label for="reason-{created.api_key.pk}">Reason</label>' in page


def test_revoking_an_unknown_key_says_so(client_as: ClientAs) -> None:
    response = client_as("admin").post("/keys/999999/revoke/", {"reason": "x"}, follow=True)
    assert "does not exist" in response.content.decode()


def test_the_empty_state_says_how_to_make_one(client_as: ClientAs) -> None:
    assert "create_api_key" in client_as("admin").get("/keys/").content.decode()


@pytest.mark.parametrize("count", [1, 80])
def test_the_list_takes_the_same_few_queries_whatever_the_number_of_keys(
    count: int, django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    agent = _agent("support")
    for number in range(count):
        api_key_create(name=f"k{number}", scopes=["read"], agents=[agent.name])
    client = client_as("admin")
    with django_assert_max_num_queries(7):
        assert client.get("/keys/").status_code == 200
