"""The audit trail is append-only: the ORM refuses changes, and so does the database."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction

from core.audit import audit_record
from core.models import AppendOnlyError, AuditEvent

TABLE = AuditEvent._meta.db_table


@pytest.fixture
def event() -> AuditEvent:
    return audit_record(
        actor="user:alice",
        action="agent_update",
        target_type="agent",
        target_id="support",
        before={"timeout_s": 10},
        after={"timeout_s": 20},
        reason="slow upstream",
    )


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
def test_saving_an_existing_audit_event_is_refused(event: AuditEvent) -> None:
    event.reason = "rewritten history"
    with pytest.raises(AppendOnlyError, match="AuditEvent rows are append-only"):
        event.save()
    assert AuditEvent.objects.get(pk=event.pk).reason == "slow upstream"


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_deleting_an_audit_event_is_refused(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_queryset_update_of_audit_events_is_refused(event: AuditEvent) -> None:
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(actor="user:mallory")
    event.actor = "user:mallory"
    with pytest.raises(AppendOnlyError), transaction.atomic():
        AuditEvent.objects.bulk_update([event], ["actor"])
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:alice"


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_raw_sql_update_of_an_audit_event_is_refused_by_the_database(event: AuditEvent) -> None:
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            f'UPDATE "{TABLE}" SET "actor" = %s WHERE "id" = %s',  # noqa: S608 - constant table
            ["user:mallory", event.pk],
        )
    assert AuditEvent.objects.get(pk=event.pk).actor == "user:alice"


@pytest.mark.django_db
def test_a_raw_sql_delete_of_an_audit_event_is_refused_on_postgresql(
    postgres: None, event: AuditEvent
) -> None:
    # PostgreSQL only: on SQLite the trigger covers UPDATE alone (see core.db.append_only).
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f'DELETE FROM "{TABLE}" WHERE "id" = %s', [event.pk])  # noqa: S608 - constant table
    assert AuditEvent.objects.filter(pk=event.pk).exists()


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize("field", ["actor", "action"])
def test_an_audit_event_needs_an_actor_and_an_action(field: str) -> None:
    fields = {"actor": "user:alice", "action": "agent_update", "target_type": "agent"}
    fields[field] = ""
    with pytest.raises(IntegrityError), transaction.atomic():
        AuditEvent.objects.create(target_id="x", **fields)
    assert not AuditEvent.objects.exists()
