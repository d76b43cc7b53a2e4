"""Writes for agents, breakers, providers and API keys."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet
from django.utils import timezone

from agents.crypto import SecretUnavailable, encrypt_secret, rotate_secret
from agents.keys import generate_key
from agents.models import Agent, ApiKey, Provider, Scope
from agents.runtime.state import BreakerAction, BreakerConfig, BreakerSnapshot
from budgets.models import Budget, BudgetScope, BudgetWindow
from console.errors import Conflict, NotFound, ValidationFailed
from console.services import audit_record

# --- API keys (the API, the CLI and the admin all come here) ---------------------------------


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
    (``agents.live_config`` signals): every serving process drops the key at its next poll,
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


# --- agents (the API's writes; config as code's rules) ---------------------------------------

_DOC_PATH = re.compile(r"^agents\[0\]\.?")


def _merge_patch(target: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7396): mappings merge, anything else replaces, null removes."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge_patch(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _agent_write(data: Mapping[str, Any], *, actor: str) -> None:
    """Validate ``data`` as an ``AgentSpec`` and write it the way ``apply`` does (columns, the
    agent-scope daily budget, audit), inside the caller's transaction."""
    from pydantic import ValidationError

    from agents.config.apply import ConfigError, config_apply
    from agents.config.schema import AgentSpec, ConfigDocument, format_errors

    try:
        spec = AgentSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise ValidationFailed(format_errors(exc)) from None
    try:
        config_apply(document=ConfigDocument(agents=[spec]), actor=actor)
    except ConfigError as exc:
        raise ValidationFailed([_DOC_PATH.sub("", line) for line in exc.errors]) from None


def agent_create(*, data: Mapping[str, Any], actor: str) -> str:
    """Create an agent from config-as-code fields; 409 if the name is taken. Returns its name."""
    name = data.get("name")
    try:
        with transaction.atomic():
            if isinstance(name, str) and Agent.objects.filter(name=name.strip()).exists():
                raise Conflict(f"agent {name.strip()!r} already exists")
            _agent_write(data, actor=actor)
    except IntegrityError:
        if isinstance(name, str) and Agent.objects.filter(name=name.strip()).exists():
            raise Conflict(f"agent {name.strip()!r} already exists") from None  # a racer won
        raise
    return str(data["name"]).strip()


def agent_update(*, name: str, patch: Mapping[str, Any], actor: str) -> None:
    """Merge ``patch`` into the agent, validate the whole agent again, write what changed."""
    from agents.selectors import agent_spec_dict

    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(name=name).first()
        if agent is None:
            raise NotFound(f"agent {name!r} does not exist")
        new_name = patch.get("name", name)
        if new_name != name:
            raise ValidationFailed(
                ["name: cannot be changed; create a new agent and delete this one"]
            )
        daily = (
            Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY, agent=agent)
            .values_list("limit_usd", flat=True)
            .first()
        )
        current = agent_spec_dict(agent, daily)
        _agent_write(_merge_patch(current, patch) | {"name": name}, actor=actor)


def agent_delete(*, name: str, actor: str) -> None:
    """Delete the agent and its budgets (executions keep their ``agent_name``).

    409 if an active API key is restricted to this agent alone: without it, the key's allow-list
    would become empty, which means *every* agent.
    """
    from agents.selectors import agent_spec_dict

    with transaction.atomic():
        agent = Agent.objects.select_for_update().filter(name=name).first()
        if agent is None:
            raise NotFound(f"agent {name!r} does not exist")
        refusal = agent_delete_refusal(agent)
        if refusal is not None:
            raise refusal
        budgets = list(Budget.objects.filter(agent=agent))
        daily = next((b.limit_usd for b in budgets if b.window == BudgetWindow.DAILY), None)
        for budget in budgets:
            audit_record(
                actor=actor,
                action="budget_delete",
                target_type="budget",
                target_id=str(budget.pk),
                before={
                    "label": f"budget agent:{name} {budget.window}",
                    "limit_usd": budget.limit_usd,
                },
            )
        audit_record(
            actor=actor,
            action="agent_delete",
            target_type="agent",
            target_id=str(agent.pk),
            before=agent_spec_dict(agent, daily),
        )
        agent.delete()  # its budgets go with it (CASCADE)


# --- breakers --------------------------------------------------------------------------------


async def breaker_command(
    *,
    key: str,
    action: BreakerAction,
    config: BreakerConfig,
    actor: str,
    reason: str = "",
) -> BreakerSnapshot:
    """An operator's breaker action on ``key`` (``agent:<name>`` or ``deployment:<id>``).

    The shared store changes state atomically (every process sees it); the action is audited;
    the resulting transitions go to the engine's events (metrics, incidents) like the runtime's
    own. Returns the breaker's state afterwards.
    """
    from agents.engine import get_engine

    engine = get_engine()
    store = engine.state
    before = await store.breaker_snapshot(key, config)
    transitions = await store.breaker_command(key, action)
    after = await store.breaker_snapshot(key, config)
    await sync_to_async(audit_record)(
        actor=actor,
        action=f"breaker_{action}",
        target_type="breaker",
        target_id=key,
        before={"state": before.state.value},
        after={"state": after.state.value},
        reason=reason,
    )
    why = f"{actor}: {action}" + (f" ({reason})" if reason else "")
    if transitions:
        # Every process's executor refuses calls to breakers it knows to be open without a round
        # trip: forget them here at once, and in the other processes at their next config poll
        # (about a second), or a forced close would wait for the old open-until time there.
        engine.executor.forget_open_breakers()
        await sync_to_async(_config_changed)()
    for transition in transitions:
        engine.events.breaker_transition(replace(transition, reason=why))
    return after


def _config_changed() -> None:
    from agents.live_config import config_version_bump

    with transaction.atomic():
        config_version_bump()


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
