"""Writes for providers and API keys."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction

from agents.crypto import SecretUnavailable, encrypt_secret, rotate_secret
from agents.keys import generate_key
from agents.models import Agent, ApiKey, Provider, Scope
from console.errors import NotFound, ValidationFailed
from console.services import audit_record


@dataclass(frozen=True)
class CreatedKey:
    api_key: ApiKey
    plaintext: str  # shown once, never stored


def api_key_create(
    *,
    name: str,
    scopes: Iterable[str],
    agents: Iterable[str] = (),
    expires_at: datetime | None = None,
    rate_limit_rpm: int | None = None,
    rate_limit_tpm: int | None = None,
    actor: str = "system",
) -> CreatedKey:
    requested = set(scopes)  # read once: ``scopes`` may be a one-shot iterator
    errors = []
    if not name.strip():
        errors.append("name: must not be empty")
    for field_name, value in (
        ("rate_limit_rpm", rate_limit_rpm),
        ("rate_limit_tpm", rate_limit_tpm),
    ):
        if value is not None and not 1 <= value <= 2_147_483_647:
            errors.append(f"{field_name}: must be between 1 and 2147483647")
    unknown = sorted(requested - set(Scope.values))
    if unknown:
        errors.append(f"scopes: unknown scope {unknown[0]!r}; expected {', '.join(Scope.values)}")
    elif not requested:
        errors.append("scopes: at least one scope is required")
    scope_list = [scope for scope in Scope.values if scope in requested]  # canonical order
    agent_names = sorted(set(agents))
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
            after={"name": key.name, "scopes": scope_list, "agents": agent_names},
        )
    return CreatedKey(api_key=key, plaintext=new.plaintext)


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


def executions_reap_stale(*, now: datetime | None = None) -> int:
    """Fail executions left ``running`` by a process that died.

    An execution cannot legitimately run past its agent's deadline (``timeout_s`` <= 3600 s),
    so one still ``running`` after ``BREAKWATER_STALE_EXECUTION_S`` belongs to a dead process.
    The conditional UPDATE makes concurrent reapers safe: each row changes once.
    """
    from django.conf import settings
    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BREAKWATER_STALE_EXECUTION_S)
    return Execution.objects.filter(status=ExecutionStatus.RUNNING, created_at__lt=cutoff).update(
        status=ExecutionStatus.FAILED,
        finished_at=now,
        error={"type": "worker_lost", "message": "the process running this execution died"},
    )
