"""The admin never shows a provider secret, in plaintext or encrypted, and never a key hash."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from pytest_django.fixtures import Settings

from agents.access.crypto import decrypt_secret, generate_key
from agents.access.keys import generate_key as generate_api_key
from agents.models import ApiKey, Execution, Provider
from agents.services import provider_secret_set
from core.models import AuditEvent

pytestmark = pytest.mark.django_db

PLAINTEXT = "sk-ant-AdminPageSecret0987654321"
PROVIDERS = "/admin/agents/provider/"


def _everything_stored() -> str:
    """Every value of every row of every table, as one string."""
    rows: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    # pytest-django's own admin_client hashes a password (about a second each); force_login
    # needs none.
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)
    return client


@pytest.fixture
def keys(settings: Settings) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]


@pytest.fixture
def stored(keys: None) -> Provider:
    Provider.objects.create(name="anthropic-main", kind="anthropic", base_url="https://x.example")
    provider_secret_set(provider_name="anthropic-main", secret=PLAINTEXT)
    return Provider.objects.get(name="anthropic-main")


def _form(**overrides: Any) -> dict[str, Any]:
    return {
        "name": "openai-main",
        "kind": "openai",
        "base_url": "https://api.example/v1",
        "api_key_env": "",
        "simulation": "{}",
        "new_api_key": "",
    } | overrides


def test_the_provider_list_shows_the_key_source_but_not_the_key(
    admin_client: Client, stored: Provider
) -> None:
    response = admin_client.get(PROVIDERS)
    assert response.status_code == 200
    page = response.content.decode()
    assert "anthropic-main" in page
    assert "stored (encrypted)" in page
    assert PLAINTEXT not in page
    assert stored.api_key_encrypted not in page


def test_the_provider_change_page_shows_neither_plaintext_nor_ciphertext(
    admin_client: Client, stored: Provider
) -> None:
    response = admin_client.get(f"{PROVIDERS}{stored.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'type="password" name="new_api_key"' in page
    assert PLAINTEXT not in page
    assert stored.api_key_encrypted not in page
    assert stored.api_key_encrypted[:20] not in page


def test_adding_a_provider_with_a_key_stores_it_encrypted_and_audited(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(new_api_key=PLAINTEXT), follow=True)
    assert response.status_code == 200
    assert PLAINTEXT not in response.content.decode()
    provider = Provider.objects.get(name="openai-main")
    assert decrypt_secret(provider.api_key_encrypted) == PLAINTEXT
    assert provider.api_key_encrypted not in response.content.decode()

    stored_everywhere = _everything_stored()
    assert PLAINTEXT not in stored_everywhere
    assert PLAINTEXT not in str(LogEntry.objects.values_list("change_message", flat=True))
    event = AuditEvent.objects.get(action="provider_secret_set")
    assert event.actor == "user:admin"
    assert event.target_id == str(provider.pk)


def test_saving_a_provider_without_a_new_key_keeps_the_stored_one(
    admin_client: Client, stored: Provider
) -> None:
    form = _form(name=stored.name, kind="anthropic", base_url="https://y.example")
    response = admin_client.post(f"{PROVIDERS}{stored.pk}/change/", form)
    assert response.status_code == 302
    provider = Provider.objects.get(pk=stored.pk)
    assert provider.base_url == "https://y.example"
    assert provider.api_key_encrypted == stored.api_key_encrypted


def test_a_rejected_form_does_not_echo_the_key(admin_client: Client, keys: None) -> None:
    form = _form(api_key_env="OPENAI_API_KEY", new_api_key=PLAINTEXT)
    response = admin_client.post(f"{PROVIDERS}add/", form)
    assert response.status_code == 200
    page = response.content.decode()
    assert "use either api_key_env or a stored secret, not both" in page
    assert PLAINTEXT not in page
    assert not Provider.objects.exists()


def test_adding_a_key_without_encryption_keys_is_a_form_error_not_a_crash(
    admin_client: Client, settings: Settings
) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = []
    response = admin_client.post(f"{PROVIDERS}add/", _form(new_api_key=PLAINTEXT))
    assert response.status_code == 200
    page = response.content.decode()
    assert "BREAKWATER_ENCRYPTION_KEYS: is required" in page
    assert PLAINTEXT not in page
    assert not Provider.objects.exists()


def test_pointing_a_provider_with_a_stored_key_at_an_env_var_forgets_the_stored_key(
    admin_client: Client, stored: Provider
) -> None:
    # The same rule as `apply`: naming an env var replaces a stored secret.
    form = _form(name=stored.name, kind="anthropic", api_key_env="ANTHROPIC_API_KEY")
    response = admin_client.post(f"{PROVIDERS}{stored.pk}/change/", form)
    assert response.status_code == 302
    provider = Provider.objects.get(pk=stored.pk)
    assert provider.api_key_env == "ANTHROPIC_API_KEY"
    assert provider.api_key_encrypted == ""
    event = AuditEvent.objects.get(action="provider_secret_clear")
    assert event.after == {"secret": "env ANTHROPIC_API_KEY"}


def test_an_openai_provider_without_base_url_is_a_form_error(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(base_url=""))
    assert response.status_code == 200
    assert "base_url is required for openai and anthropic providers" in response.content.decode()


def test_a_provider_at_a_cloud_metadata_address_is_a_form_error(
    admin_client: Client, keys: None
) -> None:
    response = admin_client.post(f"{PROVIDERS}add/", _form(base_url="http://169.254.169.254/v1"))
    assert response.status_code == 200
    assert "169.254.169.254 is link-local" in response.content.decode()
    assert "BREAKWATER_PROVIDER_ALLOW_HOSTS" in response.content.decode()
    assert not Provider.objects.filter(name="openai-main").exists()


def test_a_provider_on_loopback_or_an_allowed_metadata_host_is_saved(
    admin_client: Client, keys: None, settings: Settings
) -> None:
    settings.BREAKWATER_PROVIDER_ALLOW_HOSTS = ["169.254.10.1"]
    for name, url in [("loop", "http://127.0.0.1:9000/v1"), ("meta", "http://169.254.10.1/v1")]:
        response = admin_client.post(f"{PROVIDERS}add/", _form(name=name, base_url=url))
        assert response.status_code == 302, response.content.decode()
    assert Provider.objects.filter(name__in=["loop", "meta"]).count() == 2


def test_the_api_key_admin_hides_the_hash_and_cannot_add_keys(admin_client: Client) -> None:
    new = generate_api_key()
    key = ApiKey.objects.create(
        name="ci", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )
    listing = admin_client.get("/admin/agents/apikey/").content.decode()
    change = admin_client.get(f"/admin/agents/apikey/{key.pk}/change/").content.decode()
    for page in (listing, change):
        assert new.prefix in page
        assert new.secret_hash not in page
    assert admin_client.get("/admin/agents/apikey/add/").status_code == 403


def test_the_api_key_admin_revokes_through_the_audited_service(admin_client: Client) -> None:
    from agents.services import api_key_create

    keep = api_key_create(name="keep", scopes=["read"]).api_key
    leak = api_key_create(name="leak", scopes=["read"]).api_key
    response = admin_client.post(
        "/admin/agents/apikey/",
        {"action": "revoke", "_selected_action": [leak.pk]},
        follow=True,
    )
    assert "Revoked 1 API key(s)" in response.content.decode()
    leak.refresh_from_db()
    keep.refresh_from_db()
    assert leak.revoked_at is not None
    assert keep.revoked_at is None
    event = AuditEvent.objects.get(action="apikey_revoke")
    assert (event.actor, event.target_id) == ("user:admin", leak.prefix)
    assert event.reason == "revoked in the admin"


def test_the_api_key_admin_does_not_take_a_typed_revocation_date(admin_client: Client) -> None:
    from agents.services import api_key_create

    key = api_key_create(name="k", scopes=["read"]).api_key
    page = admin_client.get(f"/admin/agents/apikey/{key.pk}/change/").content.decode()
    assert 'name="revoked_at' not in page  # read-only: revoking is the audited action


def test_executions_are_read_only_in_the_admin(admin_client: Client) -> None:
    execution = Execution.objects.create(agent_name="support", status="succeeded")
    url = f"/admin/agents/execution/{execution.pk}/change/"
    assert admin_client.get(url).status_code == 200
    admin_client.post(url, {"agent_name": "tampered", "status": "failed"})
    execution.refresh_from_db()
    assert execution.agent_name == "support"


def test_the_audit_trail_cannot_be_edited_in_the_admin(admin_client: Client) -> None:
    from core.audit import audit_record

    event = audit_record(actor="user:a", action="agent_update", target_type="agent", target_id="x")
    assert admin_client.get("/admin/console/auditevent/add/").status_code == 403
    assert admin_client.get(f"/admin/console/auditevent/{event.pk}/delete/").status_code == 403
    assert admin_client.get(f"/admin/console/auditevent/{event.pk}/change/").status_code == 200
