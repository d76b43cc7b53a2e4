"""API keys: shown once, stored as prefix + SHA-256, checksummed, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

import agents.access.keys
from agents.access.keys import (
    ALPHABET,
    KEY_LEN,
    generate_key,
    hash_key,
    looks_like_key,
    prefix_of,
    verify_key,
)
from agents.models import Agent, ApiKey
from core.models import AuditEvent


def _everything_stored() -> str:
    """Every value of every row of every table, as one string."""
    rows: list[str] = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            rows.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(rows)


def _create_api_key(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def two_agents() -> list[Agent]:
    return [Agent.objects.create(name=name, model="gpt-4o-mini") for name in ("a", "b", "c")][:2]


# --- The key format ------------------------------------------------------------------------


def test_a_new_key_has_the_documented_shape() -> None:
    new = generate_key()
    assert new.plaintext.startswith("bw_")
    assert len(new.plaintext) == KEY_LEN == 49
    assert all(ch in ALPHABET for ch in new.plaintext[3:])
    assert new.prefix == prefix_of(new.plaintext) == new.plaintext[:11]
    assert new.secret_hash == hashlib.sha256(new.plaintext.encode()).hexdigest()
    assert looks_like_key(new.plaintext)


def test_keys_are_random() -> None:
    keys = {generate_key().plaintext for _ in range(50)}
    assert len(keys) == 50
    assert len({prefix_of(key) for key in keys}) == 50


def test_the_checksum_catches_every_one_character_typo() -> None:
    key = generate_key().plaintext
    for position in range(3, len(key)):
        replacement = ALPHABET[(ALPHABET.index(key[position]) + 1) % len(ALPHABET)]
        typo = key[:position] + replacement + key[position + 1 :]
        assert not looks_like_key(typo), f"typo at {position} not caught"


def test_two_swapped_neighbours_are_caught_too() -> None:
    key = generate_key().plaintext
    for position in range(3, len(key) - 1):
        if key[position] == key[position + 1]:
            continue
        swapped = key[:position] + key[position + 1] + key[position] + key[position + 2 :]
        assert not looks_like_key(swapped)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "bw_",
        "sk-" + "a" * 46,
        "BW_" + "a" * 46,
        "bw_" + "a" * 45,
        "bw_" + "a" * 47,
    ],
)
def test_things_that_are_not_keys_are_rejected(candidate: str) -> None:
    assert not looks_like_key(candidate)


def test_a_key_with_a_foreign_character_is_rejected_even_with_a_matching_checksum() -> None:
    body = "bw_" + "a" * 7 + "-" + "b" * 32
    assert not looks_like_key(body + agents.access.keys._checksum(body))


def test_verify_key_accepts_the_key_and_rejects_any_other() -> None:
    new = generate_key()
    assert verify_key(new.plaintext, new.secret_hash)
    assert not verify_key(generate_key().plaintext, new.secret_hash)
    other = "y" if new.plaintext.endswith("x") else "x"  # always a different last character
    assert not verify_key(new.plaintext[:-1] + other, new.secret_hash)


def test_verify_key_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    # agents.access.keys.hmac is the hmac module: patch it where agents.access.keys looks it up.
    monkeypatch.setattr("agents.access.keys.hmac.compare_digest", spy)
    new = generate_key()
    assert verify_key(new.plaintext, new.secret_hash) is True
    assert verify_key(generate_key().plaintext, new.secret_hash) is False
    assert len(calls) == 2
    assert calls[0] == (new.secret_hash.encode(), new.secret_hash.encode())
    assert calls[1][1] == new.secret_hash.encode()


def test_hash_key_is_sha256_hex() -> None:
    assert hash_key("bw_x") == hashlib.sha256(b"bw_x").hexdigest()


# --- create_api_key ------------------------------------------------------------------------


@pytest.mark.django_db
def test_create_api_key_prints_the_key_once_and_stores_only_its_hash(
    two_agents: list[Agent],
) -> None:
    out, err = _create_api_key("--name", "ci bot", "--scopes", "read,execute", "--agents", "a,b")
    plaintext = out.strip()
    assert out.count("bw_") == 1
    assert looks_like_key(plaintext)
    assert plaintext not in err
    assert "cannot be shown again" in err

    key = ApiKey.objects.get()
    assert key.name == "ci bot"
    assert key.prefix == prefix_of(plaintext)
    assert key.secret_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert key.scopes == "read,execute"
    assert key.scope_set == {"read", "execute"}
    assert sorted(agent.name for agent in key.agents.all()) == ["a", "b"]
    assert verify_key(plaintext, key.secret_hash)

    stored = _everything_stored()
    assert plaintext not in stored
    assert plaintext[len(key.prefix) : -6] not in stored  # the secret part, on its own
    assert key.prefix in stored


@pytest.mark.django_db
def test_create_api_key_audits_the_creation_without_the_key(two_agents: list[Agent]) -> None:
    out, _ = _create_api_key("--name", "ci", "--scopes", "execute,read", "--agents", "b,a")
    event = AuditEvent.objects.get(action="apikey_create")
    assert event.actor == "system:create_api_key"
    assert event.target_id == prefix_of(out.strip())
    assert event.after == {
        "id": ApiKey.objects.get().pk,
        "name": "ci",
        "scopes": ["read", "execute"],
        "agents": ["a", "b"],
        "expires_at": None,
        "rate_limit_rpm": None,
        "rate_limit_tpm": None,
        "revoked_at": None,
    }


@pytest.mark.django_db
def test_create_api_key_without_agents_allows_all_agents(two_agents: list[Agent]) -> None:
    _create_api_key("--name", "ops", "--scopes", "read, operate , admin")
    key = ApiKey.objects.get()
    assert key.scopes == "read,operate,admin"
    assert not key.agents.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--scopes", "read,root"],
            "scopes: unknown scope 'root'; expected read, execute, operate, admin",
            id="unknown-scope",
        ),
        pytest.param(["--scopes", ""], "scopes: at least one scope is required", id="no-scopes"),
        pytest.param(["--scopes", ","], "scopes: at least one scope", id="only-a-comma"),
        pytest.param(
            ["--scopes", "read", "--agents", "a,ghost"],
            "agents: unknown agent 'ghost'",
            id="unknown-agent",
        ),
        pytest.param(
            ["--scopes", "read", "--expires-at", "2030-01-01T00:00:00"],
            "--expires-at: expected ISO 8601 with a UTC offset",
            id="naive-expiry",
        ),
        pytest.param(
            ["--scopes", "read", "--expires-at", "2001-01-01T00:00:00Z"],
            "--expires-at: must be in the future",
            id="past-expiry",
        ),
    ],
)
def test_create_api_key_explains_what_is_wrong(
    two_agents: list[Agent], args: list[str], message: str
) -> None:
    with pytest.raises(CommandError) as info:
        _create_api_key("--name", "n", *args)
    assert message in str(info.value)
    assert not ApiKey.objects.exists()


@pytest.mark.django_db
def test_create_api_key_reports_every_problem_at_once() -> None:
    with pytest.raises(CommandError) as info:
        _create_api_key("--name", " ", "--scopes", "root", "--agents", "ghost")
    message = str(info.value)
    assert "name: must not be empty" in message
    assert "scopes: unknown scope 'root'" in message
    assert "agents: unknown agent 'ghost'" in message


@pytest.mark.django_db
def test_create_api_key_accepts_an_expiry_with_an_offset() -> None:
    _create_api_key("--name", "temp", "--scopes", "read", "--expires-at", "2030-01-01T00:00:00Z")
    expires_at = ApiKey.objects.get().expires_at
    assert expires_at is not None
    assert expires_at.isoformat() == "2030-01-01T00:00:00+00:00"


# --- revoke_api_key ------------------------------------------------------------------------


def _revoke_api_key(*args: str) -> str:
    out = io.StringIO()
    call_command("revoke_api_key", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_revoke_api_key_revokes_by_prefix_and_audits_it(two_agents: list[Agent]) -> None:
    out, _ = _create_api_key("--name", "leaky", "--scopes", "execute", "--agents", "a")
    prefix = prefix_of(out.strip())
    printed = _revoke_api_key(prefix, "--reason", "found in a log")
    assert f"Revoked {prefix} (leaky)" in printed
    key = ApiKey.objects.get()
    assert key.revoked_at is not None
    event = AuditEvent.objects.get(action="apikey_revoke")
    assert event.actor == "system:revoke_api_key"
    assert (event.target_type, event.target_id) == ("apikey", prefix)
    assert event.reason == "found in a log"
    assert event.before is not None
    assert event.after is not None
    assert event.before["revoked_at"] is None
    assert event.after["revoked_at"] == key.revoked_at.isoformat()
    assert event.after["agents"] == ["a"]


@pytest.mark.django_db
def test_revoke_api_key_moves_the_config_version_every_process_polls() -> None:
    from agents.config.live import config_version_current

    out, _ = _create_api_key("--name", "k", "--scopes", "read")
    before = config_version_current()
    _revoke_api_key(prefix_of(out.strip()))
    assert config_version_current() > before


@pytest.mark.django_db
def test_revoke_api_key_takes_the_whole_key_too() -> None:
    out, _ = _create_api_key("--name", "k", "--scopes", "read")
    printed = _revoke_api_key(out.strip())
    assert "Revoked" in printed
    assert out.strip() not in printed  # the secret is not echoed
    assert ApiKey.objects.get().revoked_at is not None


@pytest.mark.django_db
def test_revoking_a_revoked_key_says_so_and_audits_nothing_more() -> None:
    out, _ = _create_api_key("--name", "k", "--scopes", "read")
    _revoke_api_key(prefix_of(out.strip()))
    again = _revoke_api_key(prefix_of(out.strip()))
    assert "already revoked" in again
    assert AuditEvent.objects.filter(action="apikey_revoke").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("bw_nothere", "no API key has the prefix 'bw_nothere'"),
        ("sk-something", "PREFIX: expected bw_ followed by 8 characters"),
    ],
)
def test_revoke_api_key_explains_an_unknown_prefix(given: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        _revoke_api_key(given)
    assert message in str(info.value)
