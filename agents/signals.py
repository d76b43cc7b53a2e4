"""Signals: any write to a configuration row bumps the configuration version, so every process
reloads its live configuration within about a second (``agents.config.live``); and deletes that
would bypass the services' rules are refused, not patched up behind them."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from agents.access.services import agent_delete_refusal
from agents.config.live import config_version_bump
from agents.models import Agent, ApiKey, ModelDeployment, Provider
from budgets.models import Budget


def _on_change(sender: type, instance: Any = None, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if sender is ApiKey and update_fields is not None and set(update_fields) <= {"last_used_at"}:
        return  # usage tracking is not configuration
    config_version_bump()


def _refuse_widening_a_key(sender: type, instance: Agent, **kwargs: Any) -> None:
    """An agent deleted outside ``agent_delete`` and ``apply --prune`` (the ORM, a shell) must
    not leave a key restricted to it with an empty allow-list, which means *every* agent.

    Refused with the service's 409 rather than revoking the key here: a revocation nobody asked
    for would be a write outside the services. Both services settle such keys first (refuse,
    or revoke with an audit event), so this never fires under them."""
    refusal = agent_delete_refusal(instance)
    if refusal is not None:
        raise refusal


def connect_signals() -> None:
    pre_delete.connect(_refuse_widening_a_key, sender=Agent, dispatch_uid="bw-agent-orphan-keys")
    for model in (Provider, ModelDeployment, Agent, ApiKey, Budget):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"bw-config-save-{model.__name__}")
        post_delete.connect(
            _on_change, sender=model, dispatch_uid=f"bw-config-delete-{model.__name__}"
        )
    m2m_changed.connect(_on_change, sender=ApiKey.agents.through, dispatch_uid="bw-config-m2m")
