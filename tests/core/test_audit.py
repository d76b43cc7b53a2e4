"""The audit trail's rows (that they are append-only: tests/core/test_append_only.py)."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction

from core.audit import audit_record
from core.models import AuditEvent


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_audit_record_stores_one_row_with_json_safe_values() -> None:
    from decimal import Decimal

    audit_record(
        actor="system:apply",
        action="budget_update",
        target_type="budget",
        target_id="1",
        after={"limit_usd": Decimal("12.50")},
    )
    stored = AuditEvent.objects.get()
    assert stored.after == {"limit_usd": "12.50"}
    assert stored.before is None


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize("field", ["actor", "action"])
def test_an_audit_event_needs_an_actor_and_an_action(field: str) -> None:
    fields = {"actor": "user:alice", "action": "agent_update", "target_type": "agent"}
    fields[field] = ""
    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.create(target_id="x", **fields)
    assert not AuditEvent.objects.exists()
