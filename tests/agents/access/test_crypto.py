"""Provider secrets at rest: encrypted, rotatable, and never shown anywhere."""

from __future__ import annotations

import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from pytest_django.fixtures import Settings

from agents.access.crypto import (
    SecretUnavailable,
    check_keys,
    decrypt_secret,
    encrypt_secret,
    generate_key,
    rotate_secret,
)
from agents.access.services import provider_secret_set, provider_secrets_rotate
from agents.models import Provider
from core.models import AuditEvent

PLAINTEXT = "sk-live-Zq9fTopSecretValue1234567890"


def _everything_stored() -> str:
    """Every value of every row of every table, as one string."""
    rows: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


@pytest.fixture
def key_a(settings: Settings) -> str:
    key = generate_key()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key]
    return key


@pytest.fixture
def provider() -> Provider:
    return Provider.objects.create(
        name="openai-main", kind="openai", base_url="https://api.example/v1"
    )


def test_a_secret_round_trips_and_the_token_hides_it(key_a: str) -> None:
    token = encrypt_secret(PLAINTEXT)
    assert PLAINTEXT not in token
    assert decrypt_secret(token) == PLAINTEXT
    assert Fernet(key_a.encode()).decrypt(token.encode()).decode() == PLAINTEXT


def test_an_empty_secret_is_refused(key_a: str) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        encrypt_secret("")


def test_a_token_from_other_keys_is_unavailable_with_a_clear_message(
    settings: Settings, key_a: str
) -> None:
    token = encrypt_secret(PLAINTEXT)
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key()]
    with pytest.raises(SecretUnavailable) as info:
        decrypt_secret(token)
    message = str(info.value)
    assert "cannot be decrypted with BREAKWATER_ENCRYPTION_KEYS" in message
    assert token not in message
    assert PLAINTEXT not in message
    with pytest.raises(SecretUnavailable, match="BREAKWATER_ENCRYPTION_KEYS"):
        rotate_secret(token)


def test_a_garbage_token_is_unavailable(key_a: str) -> None:
    with pytest.raises(SecretUnavailable):
        decrypt_secret("not-a-fernet-token")


@pytest.mark.parametrize("keys", [[], ()])
def test_missing_keys_name_the_variable(settings: Settings, keys: list[str]) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = keys
    with pytest.raises(ImproperlyConfigured, match=r"^BREAKWATER_ENCRYPTION_KEYS: is required"):
        encrypt_secret(PLAINTEXT)
    with pytest.raises(ImproperlyConfigured, match=r"^BREAKWATER_ENCRYPTION_KEYS"):
        decrypt_secret("gAAAAAtoken")
    check_keys()  # no keys is a valid configuration until a secret is stored


def test_a_malformed_key_names_the_variable_and_its_position_but_not_the_key(
    settings: Settings,
) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = [generate_key(), "hunter2-not-a-key"]
    with pytest.raises(ImproperlyConfigured) as info:
        check_keys()
    message = str(info.value)
    assert message.startswith("BREAKWATER_ENCRYPTION_KEYS: key #2 is not a valid Fernet key")
    assert "hunter2" not in message


def test_the_first_key_encrypts_and_every_key_decrypts(settings: Settings) -> None:
    key_a, key_b = generate_key(), generate_key()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_a]
    old = encrypt_secret(PLAINTEXT)
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_b, key_a]
    new = encrypt_secret(PLAINTEXT)
    assert decrypt_secret(old) == decrypt_secret(new) == PLAINTEXT
    assert Fernet(key_b.encode()).decrypt(new.encode()).decode() == PLAINTEXT


@pytest.mark.django_db
def test_rotation_re_encrypts_stored_secrets_under_the_new_key(
    settings: Settings, provider: Provider
) -> None:
    key_a, key_b = generate_key(), generate_key()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_a]
    provider_secret_set(provider_name=provider.name, secret=PLAINTEXT)
    old_token = Provider.objects.get(pk=provider.pk).api_key_encrypted

    settings.BREAKWATER_ENCRYPTION_KEYS = [key_b, key_a]
    out = io.StringIO()
    call_command("rotate_provider_secrets", stdout=out)
    assert "re-encrypted 1 provider secret(s)" in out.getvalue()

    settings.BREAKWATER_ENCRYPTION_KEYS = [key_b]  # the old key is dropped
    new_token = Provider.objects.get(pk=provider.pk).api_key_encrypted
    assert new_token != old_token
    assert decrypt_secret(new_token) == PLAINTEXT
    assert Fernet(key_b.encode()).decrypt(new_token.encode()).decode() == PLAINTEXT
    with pytest.raises(SecretUnavailable):
        decrypt_secret(old_token)
    audit = AuditEvent.objects.filter(action="provider_secrets_rotate").get()
    assert audit.after == {"rotated": 1}
    assert audit.actor == "system:cli"


@pytest.mark.django_db
def test_rotation_is_all_or_nothing_and_names_the_undecryptable_provider(
    settings: Settings, provider: Provider
) -> None:
    key_a, key_b, lost = generate_key(), generate_key(), generate_key()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_a]
    provider_secret_set(provider_name=provider.name, secret=PLAINTEXT)
    settings.BREAKWATER_ENCRYPTION_KEYS = [lost]
    Provider.objects.create(name="zz-orphan", kind="simulated")
    provider_secret_set(provider_name="zz-orphan", secret="sk-orphan")
    before = dict(Provider.objects.values_list("name", "api_key_encrypted"))

    settings.BREAKWATER_ENCRYPTION_KEYS = [key_b, key_a]  # `lost` is gone
    with pytest.raises(SecretUnavailable, match="provider 'zz-orphan'"):
        provider_secrets_rotate()
    assert dict(Provider.objects.values_list("name", "api_key_encrypted")) == before
    assert not AuditEvent.objects.filter(action="provider_secrets_rotate").exists()


@pytest.mark.django_db
def test_storing_and_rotating_secrets_logs_neither_plaintext_nor_ciphertext(
    settings: Settings, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    key_a, key_b = generate_key(), generate_key()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_a]
    settings.DEBUG = True  # Django logs SQL with its parameters when DEBUG is on
    caplog.set_level(logging.DEBUG)

    provider_secret_set(provider_name=provider.name, secret=PLAINTEXT, actor="user:alice")
    old_token = Provider.objects.get(pk=provider.pk).api_key_encrypted
    settings.BREAKWATER_ENCRYPTION_KEYS = [key_b, key_a]
    provider_secrets_rotate(actor="user:alice")
    new_token = Provider.objects.get(pk=provider.pk).api_key_encrypted

    logged = caplog.text + "".join(repr(record.args) for record in caplog.records)
    for secret in (PLAINTEXT, old_token, new_token, key_a, key_b):
        assert secret not in logged


@pytest.mark.django_db
def test_the_audit_trail_records_a_secret_change_without_the_secret(
    key_a: str, provider: Provider
) -> None:
    provider_secret_set(provider_name=provider.name, secret=PLAINTEXT, actor="user:alice")
    token = Provider.objects.get(pk=provider.pk).api_key_encrypted
    event = AuditEvent.objects.get(action="provider_secret_set")
    assert event.actor == "user:alice"
    assert event.target_id == str(provider.pk)
    row = repr(AuditEvent.objects.values().get(pk=event.pk))
    assert PLAINTEXT not in row
    assert token not in row


@pytest.mark.django_db
def test_the_plaintext_is_stored_nowhere(key_a: str, provider: Provider) -> None:
    provider_secret_set(provider_name=provider.name, secret=f"  {PLAINTEXT}\n")
    stored = _everything_stored()
    assert PLAINTEXT not in stored
    assert decrypt_secret(Provider.objects.get(pk=provider.pk).api_key_encrypted) == PLAINTEXT


@pytest.mark.django_db
def test_storing_a_secret_replaces_the_env_reference(key_a: str) -> None:
    Provider.objects.create(
        name="anthropic",
        kind="anthropic",
        base_url="https://api.example",
        api_key_env="ANTHROPIC_API_KEY",
    )
    provider = provider_secret_set(provider_name="anthropic", secret=PLAINTEXT)
    provider.refresh_from_db()
    assert provider.api_key_env == ""
    assert provider.has_stored_secret


@pytest.mark.django_db
def test_export_never_prints_a_stored_secret(key_a: str, provider: Provider) -> None:
    provider_secret_set(provider_name=provider.name, secret=PLAINTEXT)
    token = Provider.objects.get(pk=provider.pk).api_key_encrypted
    out = io.StringIO()
    call_command("export", stdout=out)
    exported = out.getvalue()
    assert "openai-main" in exported
    assert PLAINTEXT not in exported
    assert token not in exported
    assert "api_key_encrypted" not in exported


@pytest.mark.django_db
def test_set_provider_secret_reads_stdin_and_prints_no_secret(
    key_a: str, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PLAINTEXT + "\n"))
    out = io.StringIO()
    call_command("set_provider_secret", provider.name, stdout=out)
    assert out.getvalue().strip() == "stored encrypted secret for provider openai-main"
    token = Provider.objects.get(pk=provider.pk).api_key_encrypted
    assert decrypt_secret(token) == PLAINTEXT


@pytest.mark.django_db
def test_set_provider_secret_without_keys_fails_naming_the_variable(
    settings: Settings, provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.BREAKWATER_ENCRYPTION_KEYS = []
    monkeypatch.setattr("sys.stdin", io.StringIO(PLAINTEXT + "\n"))
    with pytest.raises(CommandError) as info:
        call_command("set_provider_secret", provider.name)
    assert "BREAKWATER_ENCRYPTION_KEYS" in str(info.value)
    assert PLAINTEXT not in str(info.value)
    assert Provider.objects.get(pk=provider.pk).api_key_encrypted == ""


@pytest.mark.django_db
def test_set_provider_secret_for_an_unknown_provider_fails_without_echoing_the_secret(
    key_a: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PLAINTEXT + "\n"))
    with pytest.raises(CommandError, match="provider 'nope' does not exist") as info:
        call_command("set_provider_secret", "nope")
    assert PLAINTEXT not in str(info.value)
