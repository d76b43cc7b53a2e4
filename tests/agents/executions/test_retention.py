"""Retention deletes old finished executions in short batches, and keeps everything else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from prometheus_client import REGISTRY

from agents.executions.retention import (
    BATCH_FIRST,
    executions_prune,
    retention_cutoff,
)
from agents.models import Execution
from budgets.models import SpendEntry, SpendRollup, TrafficRollup
from budgets.rollups import (
    rollup_day_refresh,
    rollups_advance,
    rollups_refresh,
    traffic_rollups_refresh,
)
from core.models import AuditEvent
from tests.budgets.conftest import execution, spend

NOW = datetime(2026, 3, 11, 10, 0, tzinfo=UTC)  # a Wednesday, mid-morning UTC

pytestmark = pytest.mark.dbmatrix


class FakeClock:
    """Each read advances ``step`` seconds: every batch "takes" that long."""

    def __init__(self, step: float = 0.01) -> None:
        self.now, self.step = 0.0, step
        self.slept: list[float] = []

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _prune(clock: FakeClock | None = None, **kwargs: Any) -> Any:
    clock = clock or FakeClock()
    kwargs.setdefault("now", NOW)
    kwargs.setdefault("days", 30)
    return executions_prune(clock=clock, sleep=clock.sleep, **kwargs)


def _old(n: int, *, days: float = 40, status: str = "succeeded") -> list[uuid.UUID]:
    """``n`` executions created ``days`` ago, 10 ms apart, in one insert."""
    start = NOW - timedelta(days=days)
    rows = Execution.objects.bulk_create(
        Execution(
            agent_name="support",
            status=status,
            model="m",
            latency_ms=100,
            cost_usd=Decimal("0.001"),
            created_at=start + timedelta(milliseconds=10 * i),
        )
        for i in range(n)
    )
    return [row.id for row in rows]


def _deleted_total() -> float:
    return REGISTRY.get_sample_value("breakwater_retention_deleted_total") or 0.0


# --- what goes, what stays -------------------------------------------------------------------


def test_it_deletes_finished_executions_older_than_the_retention_and_keeps_newer_ones(
    db: None,
) -> None:
    old = [
        execution(at=NOW - timedelta(days=31), status=status).id
        for status in ("succeeded", "degraded", "failed", "cancelled")
    ]
    recent = execution(at=NOW - timedelta(days=29)).id
    today = execution(at=NOW - timedelta(minutes=1)).id

    run = _prune()

    assert run.deleted == 4
    assert run.finished
    assert run.cutoff == NOW - timedelta(days=30)
    assert not Execution.objects.filter(id__in=old).exists()
    assert set(Execution.objects.values_list("id", flat=True)) == {recent, today}
    assert run.oldest_kept == NOW - timedelta(days=29)


def test_it_never_deletes_a_queued_or_running_execution_however_old(db: None) -> None:
    queued = execution(at=NOW - timedelta(days=90), status="queued", latency_ms=None).id
    running = execution(at=NOW - timedelta(days=90), status="running", latency_ms=None).id
    done = execution(at=NOW - timedelta(days=90)).id

    run = _prune()

    assert run.deleted == 1
    assert not Execution.objects.filter(id=done).exists()
    assert set(Execution.objects.values_list("id", flat=True)) == {queued, running}
    assert run.oldest_kept == NOW - timedelta(days=90)  # unfinished work stays, and shows


def test_it_keeps_the_ledger_and_the_rollups(db: None) -> None:
    day = (NOW - timedelta(days=40)).date()
    for hours in range(3):
        at = NOW - timedelta(days=40, hours=-hours)
        e = execution(at=at, cost="0.5")
        SpendEntry.objects.create(
            execution_id=e.id,
            at=at,
            agent_name="support",
            model="m",
            cost_usd=Decimal("0.5"),
            charged_micros=500_000,
        )
    spend("0.25", at=NOW - timedelta(days=40))
    rollup_day_refresh(day=day)
    traffic_rollups_refresh(now=NOW - timedelta(days=40, hours=-2), minutes=180)
    ledger = list(SpendEntry.objects.order_by("id").values())
    rollups = list(SpendRollup.objects.order_by("id").values())
    traffic = list(TrafficRollup.objects.order_by("id").values())
    assert rollups
    assert rollups[0]["requests"] == 3
    assert traffic

    assert _prune().deleted == 3

    assert Execution.objects.count() == 0
    assert list(SpendEntry.objects.order_by("id").values()) == ledger
    assert list(SpendRollup.objects.order_by("id").values()) == rollups
    assert list(TrafficRollup.objects.order_by("id").values()) == traffic


def test_a_rollup_refresh_after_retention_leaves_the_old_rollups_unchanged(db: None) -> None:
    # The invariant with budgets.rollups: the refreshes (and the job, rollups_advance) recompute from raw rows only the days
    # (today, yesterday) and minutes (the last 15) retention never reaches, so deleting the raw
    # rows of an old day never recomputes that day's rollups to zero.
    for days in (45, 31, 20, 0):
        for n in range(2):
            execution(at=NOW - timedelta(days=days, minutes=n + 1))
    for days in (45, 31, 20, 0):
        rollup_day_refresh(day=(NOW - timedelta(days=days)).date())
    before = {r["day"]: r["requests"] for r in SpendRollup.objects.values("day", "requests")}
    assert sorted(before.values()) == [2, 2, 2, 2]

    assert _prune().deleted == 4
    rollups_refresh(now=NOW)
    traffic_rollups_refresh(now=NOW)
    rollups_advance(now=NOW)  # its first run rebuilds today and yesterday
    rollups_advance(now=NOW)

    after = {r["day"]: r["requests"] for r in SpendRollup.objects.values("day", "requests")}
    assert after == before


def test_a_one_day_retention_stops_at_the_start_of_yesterday_which_the_refresh_recomputes(
    db: None,
) -> None:
    yesterday_early = execution(at=datetime(2026, 3, 10, 0, 30, tzinfo=UTC)).id
    execution(at=datetime(2026, 3, 9, 23, 30, tzinfo=UTC))
    rollup_day_refresh(day=datetime(2026, 3, 10, tzinfo=UTC).date())

    run = _prune(days=1)

    assert run.cutoff == datetime(2026, 3, 10, tzinfo=UTC)  # not NOW - 1 day (10:00)
    assert list(Execution.objects.values_list("id", flat=True)) == [yesterday_early]
    rollups_refresh(now=NOW)
    assert SpendRollup.objects.get(day=datetime(2026, 3, 10, tzinfo=UTC).date()).requests == 1


def test_the_cutoff_refuses_less_than_a_day() -> None:
    with pytest.raises(ValueError, match="days: 0 must be at least 1"):
        retention_cutoff(now=NOW, days=0)


# --- batches ---------------------------------------------------------------------------------


def test_it_deletes_in_batches_with_a_pause_after_each_one(db: None) -> None:
    _old(2 * BATCH_FIRST + 10)
    clock = FakeClock(step=0.01)  # each batch fast: the size doubles
    sizes: list[int] = []

    run = _prune(clock, on_batch=lambda count, total: sizes.append(count))

    assert run.deleted == 2 * BATCH_FIRST + 10
    assert sizes == [BATCH_FIRST, BATCH_FIRST + 10]  # 1000, then up to 2000: 1010 were left
    assert run.batches == 2
    assert len(clock.slept) == 1
    assert clock.slept[0] >= 0.05
    assert Execution.objects.count() == 0


def test_a_slow_batch_shrinks_the_next_one(db: None) -> None:
    _old(BATCH_FIRST + 600)
    clock = FakeClock(step=0.5)  # a batch "takes" 0.5 s: twice the 0.25 s target
    sizes: list[int] = []

    _prune(clock, on_batch=lambda count, total: sizes.append(count))

    assert sizes[:2] == [BATCH_FIRST, BATCH_FIRST // 2]
    assert clock.slept[0] >= 0.5  # the pause is at least as long as the batch took


def test_a_run_stops_at_its_time_budget_and_the_next_run_goes_on(db: None) -> None:
    _old(3 * BATCH_FIRST)
    clock = FakeClock(step=0.2)
    first = _prune(clock, budget_s=0.5)

    assert first.deleted == BATCH_FIRST
    assert not first.finished
    assert Execution.objects.count() == 2 * BATCH_FIRST

    second = _prune(FakeClock(step=0.01), budget_s=None)
    assert second.deleted == 2 * BATCH_FIRST
    assert second.finished
    assert second.oldest_kept is None


def test_it_deletes_the_oldest_rows_first(db: None) -> None:
    ids = _old(BATCH_FIRST + 5, days=35)
    _prune(FakeClock(step=0.2), budget_s=0.1)  # one batch only

    assert set(Execution.objects.values_list("id", flat=True)) == set(ids[BATCH_FIRST:])


def test_it_counts_what_it_deleted_in_a_metric(db: None) -> None:
    before = _deleted_total()
    _old(7)
    _prune()
    assert _deleted_total() - before == 7
    gauge = REGISTRY.get_sample_value("breakwater_retention_oldest_execution_timestamp_seconds")
    assert gauge is not None


# --- the command -----------------------------------------------------------------------------


def test_the_command_prunes_until_done_and_is_audited(db: None, capsys: Any) -> None:
    old = _old(3, days=10)
    kept = execution(at=datetime.now(UTC) - timedelta(days=2)).id

    call_command("prune_executions", "--days", "7", "--reason", "disk nearly full")

    out = capsys.readouterr().out
    assert "Deleted 3 finished executions created before " in out
    assert not Execution.objects.filter(id__in=old).exists()
    assert list(Execution.objects.values_list("id", flat=True)) == [kept]
    event = AuditEvent.objects.get(action="executions_prune")
    assert event.actor == "system:prune_executions"
    assert event.reason == "disk nearly full"
    assert event.after is not None
    assert event.after["deleted"] == 3
    assert event.after["days"] == 7


def test_the_scheduled_policy_is_not_audited(db: None) -> None:
    _old(2)
    _prune()
    assert not AuditEvent.objects.filter(action="executions_prune").exists()


def test_the_command_refuses_less_than_a_day(db: None) -> None:
    with pytest.raises(CommandError, match="--days: must be at least 1, got 0"):
        call_command("prune_executions", "--days", "0")


def test_a_gap_in_the_history_costs_one_seek_and_no_pause(db: None) -> None:
    _old(5, days=40)
    _old(5, days=35)
    clock = FakeClock()

    run = _prune(clock)

    assert run.deleted == 10
    assert run.batches == 2  # one window per cluster, not a walk over the 5 days between
    assert len(clock.slept) == 1
