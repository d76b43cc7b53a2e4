"""Deletes that would bypass the services' rules are refused, not patched up behind them."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import pre_delete

from agents.models import Agent


def _refuse_widening_a_key(sender: type, instance: Agent, **kwargs: Any) -> None:
    """An agent deleted outside ``agent_delete`` and ``apply --prune`` (the ORM, a shell) must
    not leave a key restricted to it with an empty allow-list, which means *every* agent.

    Refused with the service's 409 rather than revoking the key here: a revocation nobody asked
    for would be a write outside the services. Both services settle such keys first (refuse,
    or revoke with an audit event), so this never fires under them."""
    from agents.services import agent_delete_refusal

    refusal = agent_delete_refusal(instance)
    if refusal is not None:
        raise refusal


def connect_signals() -> None:
    pre_delete.connect(_refuse_widening_a_key, sender=Agent, dispatch_uid="bw-agent-orphan-keys")
