"""Configuration the hot path reads from memory, reloaded when it changes.

Every write to providers, deployments, agents, budgets or API keys bumps
``console.ConfigVersion`` in the same transaction (signals below catch the admin, ``apply`` and
the API alike). Each serving process polls that one row about once a second and rebuilds an
immutable :class:`Snapshot` when the version moved, so a change (a revoked key included) is in
force everywhere within ~1 s, and no request ever waits on the database for configuration.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import close_old_connections, transaction
from django.db.models import F
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
from django.utils import timezone

from agents.crypto import SecretUnavailable, decrypt_secret
from agents.models import Agent, ApiKey, ModelDeployment, Provider
from agents.runtime.state import BreakerConfig
from agents.runtime.types import (
    AgentConfig,
    BudgetRule,
    Deployment,
    ProviderConfig,
    RateLimits,
    ToolSpec,
)
from budgets.models import Budget
from console.models import ConfigVersion

log = logging.getLogger("breakwater.config")


# --- version -----------------------------------------------------------------------------


def config_version_bump() -> None:
    """Bump the config version inside the caller's transaction."""
    updated = ConfigVersion.objects.filter(pk=1).update(
        version=F("version") + 1, changed_at=timezone.now()
    )
    if not updated:
        ConfigVersion.objects.get_or_create(pk=1, defaults={"version": 1})


def config_version_current() -> int:
    row = ConfigVersion.objects.filter(pk=1).values_list("version", flat=True).first()
    return int(row or 0)


def _on_change(sender: type, instance: Any = None, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if sender is ApiKey and update_fields is not None and set(update_fields) <= {"last_used_at"}:
        return  # usage tracking is not configuration
    config_version_bump()


def _revoke_orphaned_keys(sender: type, instance: Agent, **kwargs: Any) -> None:
    from agents.services import apikeys_revoke_orphaned_by

    apikeys_revoke_orphaned_by(agent=instance, actor="system:agent_delete")


def connect_signals() -> None:
    pre_delete.connect(_revoke_orphaned_keys, sender=Agent, dispatch_uid="bw-agent-orphan-keys")
    for model in (Provider, ModelDeployment, Agent, ApiKey, Budget):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"bw-config-save-{model.__name__}")
        post_delete.connect(
            _on_change, sender=model, dispatch_uid=f"bw-config-delete-{model.__name__}"
        )
    m2m_changed.connect(_on_change, sender=ApiKey.agents.through, dispatch_uid="bw-config-m2m")


# --- snapshot ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyInfo:
    id: int
    prefix: str
    secret_hash: str
    scopes: frozenset[str]
    agents: frozenset[str]  # empty = every agent
    expires_at: datetime | None
    limits: RateLimits = field(default_factory=RateLimits)


@dataclass(frozen=True)
class Snapshot:
    version: int = -1
    agents: dict[str, AgentConfig] = field(default_factory=dict)
    deployments: dict[str, tuple[Deployment, ...]] = field(default_factory=dict)
    deployments_by_id: dict[int, Deployment] = field(default_factory=dict)
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    global_budgets: tuple[BudgetRule, ...] = ()
    agent_budgets: dict[str, tuple[BudgetRule, ...]] = field(default_factory=dict)
    key_budgets: dict[int, tuple[BudgetRule, ...]] = field(default_factory=dict)


def budget_rule(budget: Budget) -> BudgetRule:
    target = "*"
    if budget.scope == "agent" and budget.agent is not None:
        target = budget.agent.name
    elif budget.scope == "api_key":
        target = str(budget.api_key_id)
    return BudgetRule(
        id=budget.pk,
        scope=budget.scope,  # type: ignore[arg-type]
        target=target,
        window=budget.window,  # type: ignore[arg-type]
        limit_usd=budget.limit_usd,
        timezone=budget.timezone,
        paused=budget.paused,
        raise_usd=budget.raise_usd,
        raise_until=budget.raise_until.timestamp() if budget.raise_until else None,
    )


def _api_key(provider: Provider) -> str | None:
    if provider.api_key_env:
        value = os.environ.get(provider.api_key_env)
        if not value:
            log.warning(
                "provider %s: environment variable %s is not set",
                provider.name,
                provider.api_key_env,
            )
        return value or None
    if provider.api_key_encrypted:
        try:
            return decrypt_secret(provider.api_key_encrypted)
        except SecretUnavailable as exc:
            log.error("provider %s: %s", provider.name, exc)
    return None


def agent_config(agent: Agent) -> AgentConfig:
    return AgentConfig(
        name=agent.name,
        model=agent.model,
        fallback_models=tuple(agent.fallback_models),
        cheap_model=agent.cheap_model or None,
        system_prompt=agent.system_prompt,
        timeout_s=agent.timeout_s,
        attempt_timeout_s=agent.attempt_timeout_s,
        max_retries=agent.max_retries,
        max_tokens=agent.max_tokens,
        breaker=BreakerConfig(
            failure_threshold=agent.breaker_failure_threshold,
            recovery_timeout_s=agent.breaker_recovery_timeout_s,
            half_open_max_calls=agent.breaker_half_open_max_calls,
            window_size=agent.breaker_window_size,
            minimum_calls=agent.breaker_minimum_calls,
            failure_rate_threshold=agent.breaker_failure_rate,
            slow_call_s=agent.breaker_slow_call_s,
            slow_call_rate_threshold=agent.breaker_slow_call_rate,
            probe_timeout_s=agent.timeout_s + 5.0,
        ),
        rate_limits=RateLimits(rpm=agent.rate_limit_rpm, tpm=agent.rate_limit_tpm),
        cache_ttl_s=agent.cache_ttl_s,
        tools=tuple(
            ToolSpec(
                name=tool["name"],
                kind=tool["kind"],
                description=tool.get("description", ""),
                parameters=tool.get("parameters") or {"type": "object", "properties": {}},
                function=tool.get("function"),
                url=tool.get("url"),
                timeout_s=float(tool.get("timeout_s", 10)),
                max_response_bytes=int(tool.get("max_response_bytes", 65_536)),
            )
            for tool in agent.tools
        ),
        fallback_messages=dict(agent.fallback_messages),
    )


def snapshot_build(version: int) -> Snapshot:
    providers = {p.pk: p for p in Provider.objects.all()}
    provider_configs = {
        pk: ProviderConfig(
            name=p.name,
            kind=p.kind,  # type: ignore[arg-type]
            base_url=p.base_url,
            api_key=_api_key(p),
            simulation=dict(p.simulation),
        )
        for pk, p in providers.items()
    }
    by_model: dict[str, list[Deployment]] = {}
    by_id: dict[int, Deployment] = {}
    for row in ModelDeployment.objects.filter(enabled=True).order_by("name", "id"):
        deployment = Deployment(
            id=row.pk,
            model=row.name,
            provider=provider_configs[row.provider_id],
            upstream_model=row.upstream_model,
            input_usd_per_mtok=row.input_usd_per_mtok,
            output_usd_per_mtok=row.output_usd_per_mtok,
            cached_input_usd_per_mtok=row.cached_input_usd_per_mtok,
            max_concurrency=row.max_concurrency,
            weight=row.weight,
        )
        by_model.setdefault(row.name, []).append(deployment)
        by_id[row.pk] = deployment
    keys = {}
    for key in ApiKey.objects.filter(revoked_at__isnull=True).prefetch_related("agents"):
        keys[key.prefix] = KeyInfo(
            id=key.pk,
            prefix=key.prefix,
            secret_hash=key.secret_hash,
            scopes=key.scope_set,
            agents=frozenset(a.name for a in key.agents.all()),
            expires_at=key.expires_at,
            limits=RateLimits(rpm=key.rate_limit_rpm, tpm=key.rate_limit_tpm),
        )
    global_budgets: list[BudgetRule] = []
    agent_budgets: dict[str, list[BudgetRule]] = {}
    key_budgets: dict[int, list[BudgetRule]] = {}
    for budget in Budget.objects.select_related("agent").order_by("id"):
        rule = budget_rule(budget)
        if budget.scope == "global":
            global_budgets.append(rule)
        elif budget.scope == "agent" and budget.agent is not None:
            agent_budgets.setdefault(budget.agent.name, []).append(rule)
        elif budget.scope == "api_key" and budget.api_key_id is not None:
            key_budgets.setdefault(budget.api_key_id, []).append(rule)
    return Snapshot(
        version=version,
        global_budgets=tuple(global_budgets),
        agent_budgets={k: tuple(v) for k, v in agent_budgets.items()},
        key_budgets={k: tuple(v) for k, v in key_budgets.items()},
        agents={a.name: agent_config(a) for a in Agent.objects.filter(enabled=True)},
        deployments={model: tuple(items) for model, items in by_model.items()},
        deployments_by_id=by_id,
        keys=keys,
    )


class LiveConfig:
    """The process's :class:`~agents.runtime.ports.ConfigSource`."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def agent(self, name: str) -> AgentConfig | None:
        return self.snapshot.agents.get(name)

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        return self.snapshot.deployments.get(model, ())

    def key(self, prefix: str) -> KeyInfo | None:
        return self.snapshot.keys.get(prefix)

    def budgets(self, agent: str, api_key_id: int | None) -> tuple[BudgetRule, ...]:
        snap = self.snapshot
        return (
            snap.global_budgets
            + snap.agent_budgets.get(agent, ())
            + (snap.key_budgets.get(api_key_id, ()) if api_key_id is not None else ())
        )

    def reload(self, *, force: bool = False) -> bool:
        """Rebuild the snapshot if the version moved (sync: call from a thread)."""
        version = config_version_current()
        if not force and version == self.snapshot.version:
            return False
        # A change committed between the queries below moved the version too, so the next
        # poll rebuilds again: the snapshot is never stale for longer than one interval.
        with transaction.atomic():
            self.snapshot = snapshot_build(version)
        log.info("config v%s loaded: %d agents", version, len(self.snapshot.agents))
        return True

    async def watch(
        self, interval_s: float = 1.0, on_change: Callable[[], None] | None = None
    ) -> None:
        """Poll for changes until cancelled; ``on_change`` runs (on the loop) after each."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                changed = await asyncio.to_thread(self.reload_in_thread)
            except Exception:  # keep serving the last good config
                log.exception("config reload failed")
                continue
            if changed and on_change is not None:
                on_change()

    def reload_in_thread(self) -> bool:
        close_old_connections()
        try:
            return self.reload()
        finally:
            close_old_connections()
