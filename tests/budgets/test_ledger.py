"""The record drainer appends one ledger entry per charged execution, idempotently."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agents.executions.recording import FileJournal, drain_files_once
from agents.executions.recording.events import encode_finished, row_from_event
from agents.executions.recording.store import store_rows
from agents.models import Execution
from agents.runtime.budgets import to_micros
from agents.runtime.types import ExecutionResult, ExecutionStatus, Step, Usage
from budgets.models import PriceVersion, SpendEntry

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

CREATED = datetime(2026, 3, 11, 10, 0, tzinfo=UTC).timestamp()


def result(**overrides: Any) -> ExecutionResult:
    fields: dict[str, Any] = {
        "execution_id": str(uuid.uuid4()),
        "agent": "support",
        "status": ExecutionStatus.SUCCEEDED,
        "output": "ok",
        "model": "m",
        "deployment": 7,
        "attempts": 1,
        "fallback_used": False,
        "fallback_reason": None,
        "cached": False,
        "usage": Usage(1000, 500),
        "cost_usd": Decimal("0.002"),
        "latency_ms": 120.0,
        "created_at": CREATED,
        "finished_at": CREATED + 0.12,
        "steps": (Step("attempt", model="m", deployment=7, outcome="ok"),),
    }
    return ExecutionResult(**(fields | overrides))


def store(*results: ExecutionResult) -> None:
    outcome = store_rows([(i, row_from_event(encode_finished(r))) for i, r in enumerate(results)])
    assert outcome.rejected == []


def price(deployment_id: int, at: datetime, input_price: str, output_price: str) -> None:
    PriceVersion.objects.create(
        deployment_id=deployment_id,
        model="m",
        provider="p",
        upstream_model="u",
        input_usd_per_mtok=Decimal(input_price),
        output_usd_per_mtok=Decimal(output_price),
        effective_from=at,
    )


def test_a_finished_execution_that_cost_something_is_charged_once_with_its_details() -> None:
    price(7, datetime(2026, 1, 1, tzinfo=UTC), "1", "2")
    done = result()
    store(done)

    entry = SpendEntry.objects.get()
    assert str(entry.execution_id) == done.execution_id
    assert (entry.agent_name, entry.model, entry.deployment_id) == ("support", "m", 7)
    assert (entry.input_tokens, entry.output_tokens) == (1000, 500)
    assert entry.cost_usd == Decimal("0.002")
    assert entry.charged_micros == 2000
    assert (entry.input_usd_per_mtok, entry.output_usd_per_mtok) == (Decimal(1), Decimal(2))
    assert entry.at == datetime.fromtimestamp(CREATED, UTC)  # the window the counter used
    assert not entry.cached


def test_the_same_finished_events_drained_twice_charge_each_execution_once() -> None:
    first, second = result(), result(cost_usd=Decimal("0.5"))
    store(first, second)
    store(first, second)  # redelivery (at least once)
    store(second)

    assert SpendEntry.objects.count() == 2
    assert SpendEntry.objects.get(execution_id=second.execution_id).cost_usd == Decimal("0.5")


def test_a_journal_holding_an_event_twice_leaves_one_entry_after_two_drains(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "journal"
    sink = FileJournal(journal)
    done = result()
    line = encode_finished(done) + b"\n"
    sink.append(line)
    sink.append(line)
    drain_files_once(journal)
    sink.append(line)
    drain_files_once(journal)
    sink.close()

    assert SpendEntry.objects.filter(execution_id=done.execution_id).count() == 1
    assert Execution.objects.count() == 1


def test_a_cache_hit_is_recorded_at_no_cost_with_what_it_saved() -> None:
    hit = result(cached=True, cost_usd=Decimal(0), saved_usd=Decimal("0.0042"), attempts=0)
    store(hit)

    entry = SpendEntry.objects.get()
    assert entry.cached
    assert (entry.cost_usd, entry.charged_micros) == (Decimal(0), 0)
    assert entry.saved_usd == Decimal("0.0042")
    row = Execution.objects.get()
    assert row.saved_usd == Decimal("0.0042")


def test_an_execution_that_cost_nothing_and_was_not_cached_has_no_entry() -> None:
    refused = result(
        status=ExecutionStatus.DEGRADED,
        fallback_used=True,
        fallback_reason="budget_exceeded",
        cost_usd=Decimal(0),
        model=None,
        deployment=None,
        steps=(Step("refused", outcome="budget_exceeded"),),
    )
    store(refused)

    assert Execution.objects.count() == 1
    assert not SpendEntry.objects.exists()


def test_failed_and_cancelled_executions_that_cost_something_are_charged() -> None:
    failed = result(status=ExecutionStatus.FAILED, cost_usd=Decimal("0.01"))
    cancelled = result(
        status=ExecutionStatus.CANCELLED,
        model=None,
        deployment=None,
        cost_usd=Decimal("0.03"),
        steps=(
            Step("attempt", model="m", deployment=7, outcome="error"),
            Step("attempt", model="b", deployment=9, outcome="cancelled"),
        ),
    )
    store(failed, cancelled)

    entries = {str(e.execution_id): e for e in SpendEntry.objects.all()}
    assert entries[failed.execution_id].cost_usd == Decimal("0.01")
    # No answering deployment: the last one attempted is the one charged.
    assert entries[cancelled.execution_id].deployment_id == 9
    assert entries[cancelled.execution_id].model == ""


def test_the_price_recorded_is_the_version_in_force_when_the_execution_started() -> None:
    price(7, datetime(2026, 1, 1, tzinfo=UTC), "1", "2")
    price(7, datetime(2026, 3, 11, 9, 0, tzinfo=UTC), "3", "4")
    price(7, datetime(2026, 3, 11, 11, 0, tzinfo=UTC), "5", "6")  # after it: not this one
    price(8, datetime(2026, 1, 1, tzinfo=UTC), "9", "9")  # another deployment
    store(result())

    entry = SpendEntry.objects.get()
    assert (entry.input_usd_per_mtok, entry.output_usd_per_mtok) == (Decimal(3), Decimal(4))


def test_an_unknown_price_is_recorded_as_null_and_the_charge_still_stands() -> None:
    store(result(deployment=404))

    entry = SpendEntry.objects.get()
    assert entry.input_usd_per_mtok is None
    assert entry.output_usd_per_mtok is None
    assert entry.cost_usd == Decimal("0.002")


def test_a_cost_finer_than_the_column_is_rounded_up_as_the_budget_counter_was() -> None:
    # 0.000001000001 USD settled as 2 micro-USD on the counters: the ledger must say 2 too.
    exact = Decimal("0.000001000001")
    store(result(cost_usd=exact))

    entry = SpendEntry.objects.get()
    assert entry.cost_usd == Decimal("0.00000101")
    assert entry.charged_micros == to_micros(exact, up=True) == 2
    assert to_micros(entry.cost_usd, up=True) == entry.charged_micros
    assert Execution.objects.get().cost_usd == entry.cost_usd


def test_the_model_choice_is_stored_with_the_execution() -> None:
    store(result(model_choice="cheap:simple"))

    assert Execution.objects.get().model_choice == "cheap:simple"


def test_an_event_journaled_before_model_choice_existed_takes_the_defaults() -> None:
    import json

    event = json.loads(encode_finished(result()))
    del event["model_choice"], event["saved_usd"]
    outcome = store_rows([(0, row_from_event(json.dumps(event)))])

    assert outcome.rows == 1
    row = Execution.objects.get()
    assert (row.model_choice, row.saved_usd) == ("standard", Decimal(0))


def test_a_ledger_entry_that_breaks_a_constraint_sets_its_event_aside_alone() -> None:
    good = result()
    bad = result(saved_usd=Decimal("-1"), cached=True, cost_usd=Decimal(0))
    outcome = store_rows(
        [(0, row_from_event(encode_finished(good))), (1, row_from_event(encode_finished(bad)))]
    )

    assert [index for index, _ in outcome.rejected] == [1]
    assert list(SpendEntry.objects.values_list("execution_id", flat=True)) == [
        uuid.UUID(good.execution_id)
    ]
    assert not Execution.objects.filter(id=bad.execution_id).exists()
