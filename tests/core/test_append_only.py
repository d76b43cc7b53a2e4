"""Append-only tables (the audit trail, incident timelines, the spend ledger, price history): the
ORM refuses changes, and so does the database. One suite, run for every AppendOnlyModel."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from budgets.models import PriceVersion, SpendEntry
from core.audit import audit_record
from core.db import append_only_tables
from core.models import AppendOnlyError, AppendOnlyModel, AuditEvent
from incidents.models import (
    Incident,
    IncidentEvent,
    NotificationAttempt,
    NotificationChannel,
    NotificationDelivery,
)


def _audit_event() -> AppendOnlyModel:
    return audit_record(
        actor="user:alice",
        action="agent_update",
        target_type="agent",
        target_id="support",
        before={"timeout_s": 10},
        after={"timeout_s": 20},
        reason="slow upstream",
    )


def _incident_event() -> AppendOnlyModel:
    incident = Incident.objects.create(
        kind="breaker_open",
        dedup_key="breaker:support",
        title="Breaker open for support",
        agent_name="support",
    )
    return IncidentEvent.objects.create(incident=incident, kind="opened", message="breaker opened")


def _spend_entry() -> AppendOnlyModel:
    return SpendEntry.objects.create(
        execution_id=uuid.uuid4(),
        agent_name="support",
        model="gpt-4o-mini",
        input_tokens=1000,
        output_tokens=500,
        input_usd_per_mtok=Decimal("0.15"),
        output_usd_per_mtok=Decimal("0.60"),
        cost_usd=Decimal("0.00045"),
    )


def _price_version() -> AppendOnlyModel:
    return PriceVersion.objects.create(
        deployment_id=1,
        model="gpt-4o-mini",
        provider="openai",
        upstream_model="gpt-4o-mini",
        input_usd_per_mtok=Decimal("0.15"),
        output_usd_per_mtok=Decimal("0.60"),
    )


def _notification_attempt() -> AppendOnlyModel:
    channel = NotificationChannel.objects.create(name="ops", kind="webhook", url="http://x.test")
    delivery = NotificationDelivery.objects.create(
        channel=channel, channel_name="ops", event="test", payload={"event": "test"}
    )
    return NotificationAttempt.objects.create(
        delivery=delivery, number=1, started_at=timezone.now(), ok=False, error="HTTP 500"
    )


@dataclass(frozen=True)
class Case:
    model: type[AppendOnlyModel]
    make: Callable[[], AppendOnlyModel]
    field: str  # a text field (its column has the same name) the tests try to rewrite

    def stored(self, row: AppendOnlyModel) -> object:
        return self.model.objects.values_list(self.field, flat=True).get(pk=row.pk)


CASES = [
    Case(AuditEvent, _audit_event, "actor"),
    Case(IncidentEvent, _incident_event, "message"),
    Case(SpendEntry, _spend_entry, "model"),
    Case(PriceVersion, _price_version, "upstream_model"),
    Case(NotificationAttempt, _notification_attempt, "error"),
]


@pytest.fixture(params=CASES, ids=[case.model.__name__ for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    value: Case = request.param
    return value


@pytest.fixture
def row(case: Case) -> AppendOnlyModel:
    return case.make()


def test_every_append_only_model_is_in_this_suite() -> None:
    assert sorted(case.model._meta.db_table for case in CASES) == append_only_tables()


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_saving_an_existing_row_is_refused(case: Case, row: AppendOnlyModel) -> None:
    before = case.stored(row)
    setattr(row, case.field, "rewritten history")
    with pytest.raises(AppendOnlyError, match=f"{case.model.__name__} rows are append-only"):
        row.save()
    assert case.stored(row) == before


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_deleting_a_row_is_refused(case: Case, row: AppendOnlyModel) -> None:
    with pytest.raises(AppendOnlyError):
        row.delete()
    with pytest.raises(AppendOnlyError):
        case.model.objects.filter(pk=row.pk).delete()
    with pytest.raises(AppendOnlyError):
        case.model.objects.all().delete()
    assert case.model.objects.filter(pk=row.pk).exists()


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_queryset_update_is_refused(case: Case, row: AppendOnlyModel) -> None:
    before = case.stored(row)
    with pytest.raises(AppendOnlyError):
        case.model.objects.filter(pk=row.pk).update(**{case.field: "edited"})
    setattr(row, case.field, "edited")
    with pytest.raises(AppendOnlyError), transaction.atomic():
        case.model.objects.bulk_update([row], [case.field])
    assert case.stored(row) == before


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_raw_sql_update_is_refused_by_the_database(case: Case, row: AppendOnlyModel) -> None:
    before = case.stored(row)
    table = case.model._meta.db_table
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(
            f'UPDATE "{table}" SET "{case.field}" = %s WHERE "id" = %s',  # noqa: S608 - model names
            ["edited", row.pk],
        )
    assert case.stored(row) == before


@pytest.mark.django_db
def test_a_raw_sql_delete_is_refused_on_postgresql(
    postgres: None, case: Case, row: AppendOnlyModel
) -> None:
    # PostgreSQL only: on SQLite the trigger covers UPDATE alone (see core.db.append_only).
    table = case.model._meta.db_table
    with (
        pytest.raises(IntegrityError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(f'DELETE FROM "{table}" WHERE "id" = %s', [row.pk])  # noqa: S608 - model name
    assert case.model.objects.filter(pk=row.pk).exists()
