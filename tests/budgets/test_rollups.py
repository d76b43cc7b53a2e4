"""The rollups: recomputed from executions (replace, not increment), advanced from a watermark
by the job, and read by the stats."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.access.keys import generate_key
from agents.models import Agent, ApiKey, Execution
from agents.runtime.types import ExecutionStatus
from budgets.models import (
    LATENCY_BUCKETS_MS,
    RollupWatermark,
    SpendEntry,
    SpendRollup,
    TrafficRollup,
)
from budgets.rollups import rollup_day_refresh, rollups_advance, rollups_rebuild, rollups_refresh
from budgets.selectors import agent_stats_by_window, latency_percentile, merge_buckets
from tests.budgets.conftest import NOW, execution

TODAY = NOW.date()
SIZE = len(LATENCY_BUCKETS_MS) + 1


def rollup_values() -> list[dict[str, Any]]:
    return [
        dict(row)
        for row in SpendRollup.objects.order_by("day", "agent_name", "model", "api_key_id").values(
            "day",
            "agent_name",
            "model",
            "api_key_id",
            "requests",
            "succeeded",
            "degraded",
            "failed",
            "cancelled",
            "cached",
            "input_tokens",
            "output_tokens",
            "cost_usd",
            "saved_usd",
            "latency_sum_ms",
            "latency_count",
            "latency_buckets",
            "model_choices",
            "fallbacks",
            "fallback_reasons",
        )
    ]


@pytest.fixture
def api_key(db: None) -> ApiKey:
    new = generate_key()
    return ApiKey.objects.create(
        name="ci", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )


# --- the histogram ---------------------------------------------------------------------------


def test_p95_is_interpolated_inside_the_bucket_that_holds_it() -> None:
    buckets = [0] * SIZE
    buckets[LATENCY_BUCKETS_MS.index(100)] = 90  # (75, 100]
    buckets[LATENCY_BUCKETS_MS.index(200)] = 10  # (150, 200]
    # rank 95 is the 5th of the 10 in (150, 200]: halfway.
    assert latency_percentile(buckets, 0.95) == 175.0
    assert latency_percentile(buckets, 0.5) == pytest.approx(75 + 25 * 50 / 90, abs=0.1)


def test_percentiles_of_an_empty_histogram_or_the_overflow_bucket() -> None:
    assert latency_percentile([0] * SIZE, 0.95) is None
    slow = [0] * SIZE
    slow[-1] = 3
    assert latency_percentile(slow, 0.95) == float(LATENCY_BUCKETS_MS[-1])


def test_histograms_of_different_lengths_merge_bucket_by_bucket() -> None:
    assert merge_buckets([], [1, 2]) == [1, 2] + [0] * (SIZE - 2)
    assert merge_buckets([1] * SIZE, [1] * (SIZE + 3)) == [2] * SIZE


# --- refresh ---------------------------------------------------------------------------------


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_day_is_rolled_up_per_agent_model_and_key(api_key: ApiKey) -> None:
    at = NOW - timedelta(hours=1)
    execution(at=at, latency_ms=80, cost="0.001", input_tokens=10, output_tokens=5)
    execution(at=at, latency_ms=180, cost="0.002", input_tokens=20, output_tokens=5)
    execution(at=at, status="degraded", latency_ms=5000, cost="0")
    execution(at=at, status="failed", latency_ms=None, cost="0.0005")
    execution(
        at=at,
        cached=True,
        cost="0",
        saved_usd=Decimal("0.003"),
        latency_ms=5,
        model_choice="cheap:simple",
    )
    execution(at=at, api_key=api_key, latency_ms=90)
    execution(at=at, model="other", status="cancelled", latency_ms=300)
    execution(at=at, status="running", latency_ms=None)  # not finished: not counted
    execution(at=at, agent="billing", latency_ms=40)

    assert rollups_refresh(now=NOW) == 4

    rows = {(r["agent_name"], r["model"], r["api_key_id"]): r for r in rollup_values()}
    main = rows[("support", "m", 0)]
    assert (main["requests"], main["succeeded"], main["degraded"], main["failed"]) == (5, 3, 1, 1)
    assert main["cached"] == 1
    assert (main["input_tokens"], main["output_tokens"]) == (30, 10)
    assert main["cost_usd"] == Decimal("0.0035")
    assert main["saved_usd"] == Decimal("0.003")
    assert (main["latency_sum_ms"], main["latency_count"]) == (80 + 180 + 5000 + 5, 4)
    expected = [0] * SIZE
    for latency in (80, 180, 5000, 5):
        expected[next(i for i, b in enumerate(LATENCY_BUCKETS_MS) if latency <= b)] += 1
    assert main["latency_buckets"] == expected
    assert main["model_choices"] == {"standard": 4, "cheap:simple": 1}
    assert (main["fallbacks"], main["fallback_reasons"]) == (1, {"timeout": 1})
    assert rows[("support", "m", api_key.pk)]["requests"] == 1
    assert rows[("support", "other", 0)]["cancelled"] == 1
    assert rows[("billing", "m", 0)]["requests"] == 1
    assert {r["day"] for r in rows.values()} == {TODAY}


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_refreshing_again_replaces_the_totals_rather_than_adding_to_them() -> None:
    execution(at=NOW - timedelta(hours=1))
    rollups_refresh(now=NOW)
    first = rollup_values()
    rollups_refresh(now=NOW)
    assert rollup_values() == first

    execution(at=NOW - timedelta(minutes=5), cost="0.01")
    rollups_refresh(now=NOW)
    (row,) = rollup_values()
    assert row["requests"] == 2
    assert row["cost_usd"] == Decimal("0.011")


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_group_left_without_executions_loses_its_row() -> None:
    # The reaper failed it before any model answered; the late result names the model.
    lost = execution(at=NOW - timedelta(hours=1), status="failed", model="")
    rollups_refresh(now=NOW)
    assert [r["model"] for r in rollup_values()] == [""]

    Execution.objects.filter(pk=lost.pk).update(status="succeeded", model="m")
    rollups_refresh(now=NOW)
    assert [(r["model"], r["requests"]) for r in rollup_values()] == [("m", 1)]


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_yesterday_is_refreshed_too_for_records_that_arrive_late() -> None:
    just_after_midnight = NOW.replace(hour=0, minute=5)
    execution(at=just_after_midnight - timedelta(minutes=10))  # yesterday, 23:55 UTC
    execution(at=just_after_midnight - timedelta(days=2))  # too old: left alone

    rollups_refresh(now=just_after_midnight)

    assert [(r["day"], r["requests"]) for r in rollup_values()] == [(TODAY - timedelta(days=1), 1)]


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_day_with_no_executions_writes_nothing() -> None:
    assert rollup_day_refresh(day=date(2026, 1, 1)) == 0
    assert not SpendRollup.objects.exists()


@pytest.mark.django_db
def test_the_rollups_task_runs_the_advance_and_is_scheduled_every_15_s() -> None:
    from django.utils import timezone

    from budgets.tasks import rollups_advance as task
    from console.schedule import JOBS

    task()  # the first run rebuilds and sets the mark
    execution(at=timezone.now())
    assert task() == 1  # one row version written since
    assert SpendRollup.objects.count() == 1
    assert TrafficRollup.objects.filter(step_s=60).count() == 2  # the agent's and every agent's
    job = next(job for job in JOBS if job.name == "rollups-advance")
    assert (job.task, job.every_s) == ("budgets.tasks.rollups_advance", 15)


# --- stats -----------------------------------------------------------------------------------


def _rollup(day: date, agent: str = "support", **fields: Any) -> SpendRollup:
    base: dict[str, Any] = {
        "requests": 10,
        "succeeded": 8,
        "degraded": 1,
        "failed": 1,
        "cached": 2,
        "input_tokens": 1000,
        "output_tokens": 500,
        "cost_usd": Decimal("1.5"),
        "saved_usd": Decimal("0.25"),
        "latency_sum_ms": 10 * 200,
        "latency_count": 10,
        "latency_buckets": merge_buckets([], [0] * 6 + [10]),  # all in (150, 200]
        "model_choices": {"standard": 7, "cheap:simple": 3},
        "fallbacks": 1,
        "fallback_reasons": {"timeout": 1},
        "model": "m",
    }
    return SpendRollup.objects.create(day=day, agent_name=agent, **(base | fields))


def _traffic(start: datetime, step: int = 3600, agent: str = "support", **fields: Any) -> None:
    base: dict[str, Any] = {
        "requests": 10,
        "succeeded": 8,
        "degraded": 1,
        "failed": 1,
        "cached": 2,
        "fallbacks": 3,
        "fallback_reasons": {"timeout": 1, "rate_limited": 2},
        "cost_usd": Decimal("1.5"),
        "latency_sum_ms": 10 * 200,
        "latency_count": 10,
        "latency_buckets": merge_buckets([], [0] * 6 + [10]),
        "model_choices": {"standard": 10},
    }
    TrafficRollup.objects.create(step_s=step, start=start, agent_name=agent, **(base | fields))


@pytest.mark.django_db
def test_stats_sum_the_windows_daily_rollups_per_agent_and_rate_them_per_day(
    django_assert_num_queries: Any,
) -> None:
    _rollup(TODAY)
    _rollup(TODAY - timedelta(days=1), api_key_id=3)
    _rollup(TODAY - timedelta(days=1), model="x")
    _rollup(TODAY - timedelta(days=5))
    _rollup(TODAY - timedelta(days=8))  # outside 7d
    _rollup(TODAY, agent="billing", requests=4, succeeded=4, degraded=0, failed=0, cached=0,
            fallbacks=0, fallback_reasons={})  # fmt: skip

    with django_assert_num_queries(1):
        stats = agent_stats_by_window(window="7d", now=NOW)

    rows = {item["agent"]: item for item in stats.items}
    support = rows["support"]
    assert support["requests"] == 40
    # Five days ago 00:00 to today 10:00 UTC is 5 days and 10 hours.
    span_days = 5 + 10 / 24
    assert support["requests_per_day"] == round(40 / span_days, 2)
    assert support["cost_usd"] == 6.0
    assert support["cost_per_day_usd"] == round(6.0 / span_days, 6)
    assert support["success_rate"] == 0.8
    assert support["cache_hit_rate"] == 0.2
    assert support["saved_usd"] == 1.0
    assert (support["input_tokens"], support["output_tokens"]) == (4000, 2000)
    assert support["avg_latency_ms"] == 200.0
    assert 150 < support["p95_latency_ms"] <= 200
    assert support["model_choices"] == {"cheap:simple": 12, "standard": 28}
    assert (support["fallbacks"], support["fallback_rate"]) == (4, 0.1)
    assert support["fallback_reasons"] == {"timeout": 4}
    # billing started today: its rate is over the 10 hours it has existed in the window.
    assert rows["billing"]["requests_per_day"] == round(4 / (10 / 24), 2)
    assert rows["billing"]["fallback_rate"] == 0.0
    assert stats.since.date() == TODAY - timedelta(days=7)


@pytest.mark.django_db
def test_the_24h_stats_are_a_trailing_day_of_hour_rollups(django_assert_num_queries: Any) -> None:
    now = NOW.replace(minute=30)  # 10:30: the window starts at 10:00 yesterday
    hour = NOW.replace(minute=0)
    _traffic(hour)  # the current hour
    _traffic(hour - timedelta(hours=24))  # 10:00 yesterday: holds now - 24 h
    _traffic(hour - timedelta(hours=25))  # too old
    _traffic(hour - timedelta(minutes=5), step=60)  # a minute row: not read for 24h
    _traffic(hour, agent="billing", requests=2, succeeded=2, degraded=0, failed=0, cached=0,
             fallbacks=0, fallback_reasons={})  # fmt: skip
    _rollup(TODAY)  # the daily rollups are not read

    with django_assert_num_queries(1):
        stats = agent_stats_by_window(window="24h", now=now)

    assert stats.since == hour - timedelta(hours=24)
    rows = {item["agent"]: item for item in stats.items}
    support = rows["support"]
    assert support["requests"] == 20
    assert support["requests_per_day"] == round(20 / (24.5 / 24), 2)
    assert (support["fallbacks"], support["fallback_rate"]) == (6, 0.3)
    assert support["fallback_reasons"] == {"rate_limited": 4, "timeout": 2}
    assert support["model_choices"] == {"standard": 20}
    assert rows["billing"]["requests_per_day"] == round(2 / (0.5 / 24), 2)


@pytest.mark.django_db
def test_the_1h_stats_are_a_trailing_hour_of_minute_rollups() -> None:
    now = NOW.replace(minute=30, second=30)
    minute = now.replace(second=0)
    _traffic(minute, step=60)
    _traffic(minute - timedelta(minutes=60), step=60)  # 9:30 holds now - 1 h
    _traffic(minute - timedelta(minutes=61), step=60)  # too old
    _traffic(minute.replace(minute=0), step=3600)  # an hour row: not read for 1h

    (item,) = agent_stats_by_window(window="1h", now=now).items
    assert item["requests"] == 20
    assert item["cost_usd"] == 3.0


@pytest.mark.django_db
def test_stats_can_be_limited_to_some_agents(django_assert_num_queries: Any) -> None:
    _rollup(TODAY)
    _rollup(TODAY, agent="billing")
    with django_assert_num_queries(1):
        stats = agent_stats_by_window(window="30d", now=NOW, agents=frozenset({"billing"}))
    assert [item["agent"] for item in stats.items] == ["billing"]


@pytest.mark.django_db
def test_an_agent_with_no_latency_recorded_has_no_latency_figures() -> None:
    _rollup(TODAY, latency_sum_ms=0, latency_count=0, latency_buckets=[], requests=1,
            succeeded=0, degraded=0, failed=1, cached=0)  # fmt: skip
    (item,) = agent_stats_by_window(window="7d", now=NOW).items
    assert item["avg_latency_ms"] is None
    assert item["p95_latency_ms"] is None
    assert item["success_rate"] == 0.0


# --- the job: advancing from the watermark (budgets/rollups.py, DECISIONS #23) -----------------
#
# Each statement commits on its own here (transaction=True), as the recorder's and the job's
# transactions do in production: the watermark is about what other transactions committed.

committed = pytest.mark.django_db(transaction=True)
RUN_AT = NOW + timedelta(minutes=30)


def recorded(
    at: datetime, *, agent: str = "support", status: str = "succeeded", **result: Any
) -> str:
    """An execution stored the way the recorder stores it: its ``finished`` journal event."""
    from agents.executions.recording.events import encode_finished, row_from_event
    from agents.executions.recording.store import store_rows
    from tests.agents.executions.test_recording import request_for, result_for

    request = request_for(agent=agent)
    fields: dict[str, Any] = {
        "status": ExecutionStatus(status),
        "fallback_used": status == "degraded",
        "fallback_reason": "timeout" if status == "degraded" else None,
        "error": None,
        "created_at": at.timestamp(),
        "finished_at": at.timestamp() + 0.8,
        **result,
    }
    finished = result_for(request, **fields)
    outcome = store_rows([(0, row_from_event(encode_finished(finished)))])
    assert not outcome.rejected
    return str(finished.execution_id)


def day_requests() -> dict[tuple[date, str], int]:
    totals: dict[tuple[date, str], int] = {}
    for row in SpendRollup.objects.all():
        key = (row.day, row.agent_name)
        totals[key] = totals.get(key, 0) + row.requests
    return totals


def minute_requests(agent: str = "support") -> dict[datetime, int]:
    return dict(
        TrafficRollup.objects.filter(step_s=60, agent_name=agent).values_list("start", "requests")
    )


def rollup_tables() -> tuple[list[dict[str, Any]], list[tuple[Any, ...]]]:
    traffic = list(
        TrafficRollup.objects.order_by("step_s", "start", "agent_name").values_list(
            "step_s", "start", "agent_name", "requests", "succeeded", "failed", "slow", "cost_usd"
        )
    )
    return rollup_values(), traffic


@committed
def test_the_first_run_rebuilds_today_and_yesterday_and_sets_the_mark() -> None:
    execution(at=NOW - timedelta(days=1))
    execution(at=NOW)
    run = rollups_advance(now=RUN_AT)
    assert run.rebuilt
    assert day_requests() == {(TODAY - timedelta(days=1), "support"): 1, (TODAY, "support"): 1}
    mark = RollupWatermark.objects.get(name="executions")
    assert mark.mark
    assert mark.spend_from == TODAY - timedelta(days=1)


@committed
def test_the_watermark_advances_so_each_run_reads_only_the_rows_written_since_the_last() -> None:
    rollups_advance(now=RUN_AT)
    for _ in range(3):
        execution(at=NOW)
    assert rollups_advance(now=RUN_AT).rows == 3
    again = rollups_advance(now=RUN_AT)
    assert (again.rows, again.minutes) == (0, 0)  # nothing new: nothing read, nothing refolded
    execution(at=NOW + timedelta(minutes=1))
    assert rollups_advance(now=RUN_AT).rows == 1
    assert day_requests() == {(TODAY, "support"): 4}
    assert minute_requests() == {NOW: 3, NOW + timedelta(minutes=1): 1}


@committed
def test_a_late_record_from_the_journal_is_counted_by_the_next_run() -> None:
    """A record reaching the database after its minute's refresh (a journal drained late):
    the next run refolds that minute, its hour, its day and the daily spend."""
    rollups_advance(now=RUN_AT)
    recorded(NOW)
    rollups_advance(now=RUN_AT)
    assert minute_requests() == {NOW: 1}
    recorded(NOW + timedelta(seconds=20), status="failed")  # late: 29 minutes after its minute
    run = rollups_advance(now=RUN_AT)
    assert (run.rows, run.minutes) == (1, 1)
    minute = TrafficRollup.objects.get(step_s=60, start=NOW, agent_name="support")
    assert (minute.requests, minute.succeeded, minute.failed) == (2, 1, 1)
    hour = TrafficRollup.objects.get(step_s=3600, start=NOW, agent_name="*")
    day = TrafficRollup.objects.get(step_s=86400, agent_name="*")
    assert hour.requests == day.requests == 2
    assert day_requests() == {(TODAY, "support"): 2}


@committed
def test_a_record_late_by_more_than_the_minute_rows_recomputes_its_hour_and_day_whole() -> None:
    rollups_advance(now=RUN_AT)
    old = NOW - timedelta(days=3)
    execution(at=old)
    execution(at=old + timedelta(minutes=5))
    run = rollups_advance(now=RUN_AT)
    assert (run.hours_recomputed, run.days_recomputed) == (1, 1)
    assert day_requests() == {(old.date(), "support"): 2}
    assert TrafficRollup.objects.get(step_s=3600, start=old, agent_name="support").requests == 2
    assert not TrafficRollup.objects.filter(step_s=60, start__lte=old + timedelta(minutes=5))


@committed
def test_a_record_from_before_the_retention_cutoff_leaves_the_rollups_of_its_day_alone(
    settings: Any,
) -> None:
    """Retention deleted that day's raw rows: recomputing it from one record drained (or
    edited) that late would replace a day of rollups by that one record."""
    settings.BREAKWATER_RETENTION_DAYS = 2
    old = NOW - timedelta(days=4)
    execution(at=old)
    execution(at=old + timedelta(minutes=1))
    rollups_rebuild(now=RUN_AT, days=5)
    before = rollup_tables()
    Execution.objects.filter(created_at__lt=NOW - timedelta(days=3)).delete()  # retention
    execution(at=old + timedelta(minutes=2))  # then a record of that day reaches the database

    run = rollups_advance(now=RUN_AT)

    assert (run.rows, run.minutes, run.hours_recomputed, run.days_recomputed) == (1, 0, 0, 0)
    assert rollup_tables() == before
    assert day_requests()[(old.date(), "support")] == 2


@committed
def test_a_record_that_changes_moves_its_counts_instead_of_adding_them_again() -> None:
    """The reaper fails a run its process left; the truth arrives later and overwrites it."""
    rollups_advance(now=RUN_AT)
    execution_id = recorded(NOW, status="failed")
    rollups_advance(now=RUN_AT)
    redelivered = recorded(
        NOW, status="succeeded", execution_id=execution_id, cost_usd=Decimal("0.5")
    )
    assert redelivered == execution_id
    rollups_advance(now=RUN_AT)
    [row] = SpendRollup.objects.all()
    assert (row.requests, row.succeeded, row.failed, row.cost_usd) == (1, 1, 0, Decimal("0.5"))
    minute = TrafficRollup.objects.get(step_s=60, start=NOW, agent_name="support")
    assert (minute.requests, minute.succeeded, minute.failed) == (1, 1, 0)


@committed
def test_a_redelivered_identical_record_keeps_its_seq_and_is_not_read_again() -> None:
    execution_id = recorded(NOW)
    rollups_advance(now=RUN_AT)
    seq = Execution.objects.get(pk=execution_id).seq
    recorded(NOW, execution_id=execution_id)
    assert Execution.objects.get(pk=execution_id).seq == seq
    assert rollups_advance(now=RUN_AT).rows == 0


@committed
def test_running_it_twice_changes_nothing_and_equals_a_rebuild() -> None:
    rollups_advance(now=RUN_AT)
    for minute in range(5):
        execution(
            at=NOW + timedelta(minutes=minute), status="degraded" if minute % 2 else "succeeded"
        )
    rollups_advance(now=RUN_AT)
    once = rollup_tables()
    Execution.objects.filter(created_at=NOW).update(seq=None)  # nothing to read: a no-op run
    rollups_advance(now=RUN_AT)
    assert rollup_tables() == once
    rollups_rebuild(now=RUN_AT)
    assert rollup_tables() == once


@committed
def test_the_slow_count_follows_each_agents_threshold() -> None:
    Agent.objects.create(name="strict", model="m", slo_latency_ms=500)
    rollups_advance(now=RUN_AT)
    for latency in (400, 600, 2500):
        execution(at=NOW, agent="strict", latency_ms=latency)
        execution(at=NOW, agent="support", latency_ms=latency)
    rollups_advance(now=RUN_AT)
    slow = dict(
        TrafficRollup.objects.filter(step_s=60, start=NOW).values_list("agent_name", "slow")
    )
    assert slow == {"strict": 2, "support": 1, "*": 3}


@committed
def test_a_queued_execution_keeps_its_accepted_time_in_the_daily_rollup() -> None:
    """Accepted at 23:59:40, started by a worker after midnight: yesterday's spend."""
    from agents.executions.queue import execution_claim

    Agent.objects.create(name="support", model="m")
    accepted = datetime(2026, 3, 11, 23, 59, 40, tzinfo=UTC)
    started = accepted + timedelta(seconds=50)
    rollups_advance(now=accepted)
    queued = Execution.objects.create(
        agent_name="support", status="queued", created_at=accepted, queued_at=accepted
    )
    assert execution_claim(execution_id=str(queued.pk), now=started).outcome == "claimed"
    recorded(started, execution_id=str(queued.pk))  # the runtime's time is the start
    rollups_advance(now=started + timedelta(seconds=5))
    row = Execution.objects.get(pk=queued.pk)
    assert (row.created_at, row.started_at) == (accepted, started)
    assert row.queue_wait_ms == 50_000
    assert day_requests() == {(accepted.date(), "support"): 1}
    assert minute_requests() == {datetime(2026, 3, 11, 23, 59, tzinfo=UTC): 1}
    # The ledger files it at its start: the budget window its counter was charged in.
    assert SpendEntry.objects.get(execution_id=queued.pk).at == started


def test_a_transaction_that_commits_after_a_run_is_counted_by_the_next(
    postgres: None, transactional_db: None
) -> None:
    """Rows become visible in commit order, not in the order of their ids: a run that starts
    while a writer's transaction is open must not skip it once it commits."""
    from django.db import connection, transaction

    rollups_advance(now=RUN_AT)
    written, commit, done = threading.Event(), threading.Event(), threading.Event()

    def slow_writer() -> None:
        try:
            with transaction.atomic():
                execution(at=NOW)
                written.set()
                commit.wait(10)
        finally:
            connection.close()
            done.set()

    thread = threading.Thread(target=slow_writer)
    thread.start()
    assert written.wait(10)
    execution(at=NOW + timedelta(seconds=1))  # a later transaction, committed first
    assert rollups_advance(now=RUN_AT).rows == 1
    commit.set()
    assert done.wait(10)
    thread.join()
    assert rollups_advance(now=RUN_AT).rows == 1
    assert minute_requests() == {NOW: 2}


def test_concurrent_runs_and_writers_count_every_record_exactly_once(
    postgres: None, transactional_db: None
) -> None:
    from django.db import connection

    rollups_advance(now=RUN_AT)
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(agent: str) -> None:
        try:
            for i in range(40):
                recorded(
                    NOW + timedelta(seconds=i),
                    agent=agent,
                    status="failed" if i % 7 == 0 else "succeeded",
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def refresher() -> None:
        try:
            while not stop.is_set():
                rollups_advance(now=RUN_AT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    writers = [threading.Thread(target=writer, args=(a,)) for a in ("support", "writer")]
    refreshers = [threading.Thread(target=refresher) for _ in range(3)]
    for thread in writers + refreshers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in refreshers:
        thread.join()
    assert not errors
    rollups_advance(now=RUN_AT)
    advanced = rollup_tables()
    assert day_requests() == {(TODAY, "support"): 40, (TODAY, "writer"): 40}
    rollups_rebuild(now=RUN_AT)
    assert rollup_tables() == advanced
