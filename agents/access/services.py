"""Writes for access: API keys (the API, the CLI and the admin all come here), provider secrets
at rest, and the keys an agent's deletion would widen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from agents.access.crypto import SecretUnavailable, encrypt_secret, rotate_secret
from agents.access.keys import generate_key
from agents.models import Agent, ApiKey, Provider, Scope
from core.audit import audit_record
from core.errors import Conflict, NotFound, ValidationFailed

# --- API keys ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


MAX_KEY_AGENTS = 1000


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str],
    agents: Iterable[str] = (),
    expires_at: datetime | None = None,
    rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None,
    actor: str = "system",
    request_id: str = "",
) -> CreatedKey:
    """A new key; its plaintext is in the answer only (the database keeps its SHA-256). Audited;
    every serving process knows it within about a second (the config version moves)."""
    requested = set(scopes)  # read once: ``scopes`` may be a one-shot iterator
    errors = []
    if not name.strip():
        errors.append("name: must not be empty")
    elif len(name.strip()) > 100:
        errors.append("name: must be at most 100 characters")
    for field_name, value in (
        ("rate_limit_rpm", rate_limit_rpm),
        ("rate_limit_tpm", rate_limit_tpm),
    ):
        if value is not None and not 1 <= value <= 2_147_483_647:
            errors.append(f"{field_name}: must be between 1 and 2147483647")
    if expires_at is not None and expires_at.tzinfo is None:
        errors.append("expires_at: must include a UTC offset")
    unknown = sorted(requested - set(Scope.values))
    if unknown:
        errors.append(f"scopes: unknown scope {unknown[0]!r}; expected {', '.join(Scope.values)}")
    elif not requested:
        errors.append("scopes: at least one scope is required")
    scope_list = [scope for scope in Scope.values if scope in requested]  # canonical order
    agent_names = sorted(set(agents))
    if len(agent_names) > MAX_KEY_AGENTS:
        errors.append(f"agents: at most {MAX_KEY_AGENTS} agents")
        agent_names = []
    found = list(Agent.objects.filter(name__in=agent_names))
    missing = sorted(set(agent_names) - {agent.name for agent in found})
    if missing:
        errors.append(f"agents: unknown agent {missing[0]!r}")
    if errors:
        raise ValidationFailed(errors)

    new = generate_key()
    with transaction.atomic():
        key = ApiKey.objects.create(
            name=name.strip(),
            prefix=new.prefix,
            secret_hash=new.secret_hash,
            scopes=",".join(scope_list),
            expires_at=expires_at,
            rate_limit_rpm=rate_limit_rpm,
            rate_limit_tpm=rate_limit_tpm,
        )
        key.agents.set(found)
        audit_record(
            actor=actor,
            action="apikey_create",
            target_type="apikey",
            target_id=key.prefix,
            after=_key_state(key, agent_names),
            request_id=request_id,
        )
    return CreatedKey(api_key=key, plaintext=new.plaintext)


def _key_state(key: ApiKey, agents: list[str]) -> dict[str, Any]:
    """What the audit trail keeps of a key (never its hash)."""
    return {
        "id": key.pk,
        "name": key.name,
        "scopes": key.scopes.split(","),
        "agents": agents,
        "expires_at": key.expires_at,
        "rate_limit_rpm": key.rate_limit_rpm,
        "rate_limit_tpm": key.rate_limit_tpm,
        "revoked_at": key.revoked_at,
    }


def api_key_revoke(
    *,
    key_id: int | None = None,
    prefix: str | None = None,
    actor: str,
    reason: str = "",
    request_id: str = "",
) -> tuple[ApiKey, bool]:
    """Revoke the key with ``key_id`` (or ``prefix``): ``(key, revoked now)``.

    The row and its audit event are one transaction, which also moves the config version
    (``agents.config.live`` signals): every serving process drops the key at its next poll,
    within about a second. Revoking a revoked key changes nothing and audits nothing."""
    if (key_id is None) == (prefix is None):
        raise ValueError("give key_id or prefix")
    with transaction.atomic():
        rows = ApiKey.objects.select_for_update()
        key = (rows.filter(pk=key_id) if key_id is not None else rows.filter(prefix=prefix)).first()
        if key is None:
            raise NotFound(f"API key {key_id if key_id is not None else prefix!r} does not exist")
        if key.revoked_at is not None:
            return key, False
        agents = sorted(key.agents.values_list("name", flat=True))
        before = _key_state(key, agents)
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="apikey_revoke",
            target_type="apikey",
            target_id=key.prefix,
            before=before,
            after=_key_state(key, agents),
            reason=reason,
            request_id=request_id,
        )
    return key, True


def provider_secret_set(*, provider_name: str, secret: str, actor: str = "system") -> Provider:
    """Store ``secret`` encrypted (replacing any ``api_key_env`` reference)."""
    if not secret.strip():
        raise ValidationFailed(["secret: must not be empty"])
    with transaction.atomic():
        provider = Provider.objects.select_for_update().filter(name=provider_name).first()
        if provider is None:
            raise NotFound(f"provider {provider_name!r} does not exist")
        provider.api_key_encrypted = encrypt_secret(secret.strip())
        provider.api_key_env = ""
        provider.save(update_fields=["api_key_encrypted", "api_key_env", "updated_at"])
        audit_record(
            actor=actor,
            action="provider_secret_set",
            target_type="provider",
            target_id=str(provider.pk),
            after={"secret": "stored (encrypted)"},
        )
    return provider


def provider_secrets_rotate(*, actor: str = "system") -> int:
    """Re-encrypt every stored secret under the first key of BREAKWATER_ENCRYPTION_KEYS.

    All or nothing: one secret that no configured key can decrypt rolls the whole rotation back
    and names its provider.
    """
    count = 0
    with transaction.atomic():
        for provider in Provider.objects.select_for_update().exclude(api_key_encrypted=""):
            try:
                provider.api_key_encrypted = rotate_secret(provider.api_key_encrypted)
            except SecretUnavailable as exc:
                raise SecretUnavailable(f"provider {provider.name!r}: {exc}") from None
            provider.save(update_fields=["api_key_encrypted", "updated_at"])
            count += 1
        audit_record(
            actor=actor,
            action="provider_secrets_rotate",
            target_type="provider",
            target_id="*",
            after={"rotated": count},
        )
    return count


# --- keys an agent's deletion would widen ----------------------------------------------------


def _keys_only_for(agent: Agent) -> QuerySet[ApiKey]:
    """Active keys whose allow-list names only ``agent``."""
    # Count over each key's whole allow-list (filtering the join by agent first would count 1).
    return (
        ApiKey.objects.filter(
            pk__in=ApiKey.objects.filter(agents=agent).values("pk"), revoked_at__isnull=True
        )
        .annotate(allowed=Count("agents"))
        .filter(allowed=1)
    )


def agent_delete_refusal(agent: Agent) -> Conflict | None:
    """Why ``agent`` may not be deleted (None: it may): an active API key restricted to it alone.

    An empty allow-list means "every agent", so deleting a key's last allowed agent would
    silently widen the key to all agents. ``agent_delete`` answers this 409; a delete that
    bypasses it (the ORM, a shell) is refused the same way (``agents.signals``)."""
    sole = sorted(_keys_only_for(agent).values_list("prefix", flat=True))
    if not sole:
        return None
    return Conflict(
        f"API keys {', '.join(sole)} may use only agent {agent.name!r}; revoke them or widen "
        "their allow-list first"
    )


def apikeys_revoke_orphaned_by(*, agent: Agent, actor: str = "system") -> int:
    """Before ``agent`` is deleted by ``apply --prune``: revoke (audited) the keys whose
    allow-list names only it, instead of widening them to every agent (fail closed)."""
    revoked = 0
    for key_id in list(_keys_only_for(agent).values_list("pk", flat=True)):
        _, now = api_key_revoke(
            key_id=key_id,
            actor=actor,
            reason=f"its only allowed agent {agent.name!r} was deleted",
        )
        revoked += now
    return revoked
