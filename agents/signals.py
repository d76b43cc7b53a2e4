"""Signals: any write to a configuration row bumps the configuration version, so every
process reloads its live configuration within about a second (``agents.config.live``)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete

from agents.config.live import config_version_bump
from agents.models import Agent, ApiKey, ModelDeployment, Provider
from agents.services import apikeys_revoke_orphaned_by
from budgets.models import Budget


def _on_change(sender: type, instance: Any = None, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if sender is ApiKey and update_fields is not None and set(update_fields) <= {"last_used_at"}:
        return  # usage tracking is not configuration
    config_version_bump()


def _revoke_orphaned_keys(sender: type, instance: Agent, **kwargs: Any) -> None:
    apikeys_revoke_orphaned_by(agent=instance, actor="system:agent_delete")


def connect_signals() -> None:
    pre_delete.connect(_revoke_orphaned_keys, sender=Agent, dispatch_uid="bw-agent-orphan-keys")
    for model in (Provider, ModelDeployment, Agent, ApiKey, Budget):
        post_save.connect(_on_change, sender=model, dispatch_uid=f"bw-config-save-{model.__name__}")
        post_delete.connect(
            _on_change, sender=model, dispatch_uid=f"bw-config-delete-{model.__name__}"
        )
    m2m_changed.connect(_on_change, sender=ApiKey.agents.through, dispatch_uid="bw-config-m2m")
