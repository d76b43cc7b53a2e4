"""Daily rollups are recomputed from executions (replace, not increment) and feed the stats."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.access.keys import generate_key
from agents.models import ApiKey, Execution
from budgets.models import LATENCY_BUCKETS_MS, SpendRollup, TrafficRollup
from budgets.selectors import agent_stats_by_window, latency_percentile, merge_buckets
from budgets.services import rollup_day_refresh, rollups_refresh
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
def test_the_rollups_refresh_task_runs_the_service() -> None:
    from django.utils import timezone

    from budgets.tasks import rollups_refresh as task

    execution(at=timezone.now())
    assert task() == 1
    assert SpendRollup.objects.count() == 1


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
