"""Traffic rollups (minute, hour, day rows) are recomputed from executions and feed the console's
series and totals (budgets.series), one query per selector."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.models import Execution
from budgets.models import ALL_AGENTS, LATENCY_BUCKETS_MS, TrafficRollup
from budgets.rollups import traffic_rollups_prune, traffic_rollups_refresh
from budgets.selectors import latency_percentile
from budgets.series import (
    WINDOWS,
    Series,
    SeriesPoint,
    overview_totals,
    traffic_series,
    traffic_series_by_agent,
    window_parse,
)
from core.errors import ValidationFailed
from tests.budgets.conftest import NOW, execution

SIZE = len(LATENCY_BUCKETS_MS) + 1
MINUTE = NOW.replace(minute=37, second=20)  # 10:37:20 UTC, inside the minute 10:37
A_MONTH = 60 * 24 * 31  # minutes: recompute everything the tests built


def rows(step: int, *, every: bool = False) -> dict[tuple[datetime, str], TrafficRollup]:
    """Each agent's rows of ``step`` (``every``: the every-agent rows too)."""
    found = TrafficRollup.objects.filter(step_s=step)
    if not every:
        found = found.exclude(agent_name=ALL_AGENTS)
    return {(r.start, r.agent_name): r for r in found}


def at_minute(minutes_ago: int, second: int = 5) -> datetime:
    return MINUTE.replace(second=second) - timedelta(minutes=minutes_ago)


def floor(at: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, UTC)


# --- windows ---------------------------------------------------------------------------------


def test_the_windows_are_the_consoles_four() -> None:
    assert list(WINDOWS) == ["1h", "24h", "7d", "30d"]
    assert window_parse("7d") == "7d"


@pytest.mark.parametrize("bad", ["1y", "", "24H", "1d"])
def test_an_unknown_window_is_refused_naming_it_and_the_allowed_ones(bad: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        window_parse(bad)
    assert caught.value.errors == [f"window: {bad!r} is not one of 1h, 24h, 7d, 30d"]


@pytest.mark.django_db
def test_a_selector_refuses_an_unknown_window_before_any_query(
    django_assert_num_queries: Any,
) -> None:
    with django_assert_num_queries(0), pytest.raises(ValidationFailed, match="'2h'"):
        traffic_series(window="2h", now=NOW)


# --- refresh ---------------------------------------------------------------------------------


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_minute_rows_count_outcomes_fallbacks_retries_and_latency_per_agent() -> None:
    at = at_minute(3)
    execution(at=at, latency_ms=80, cost="0.001", input_tokens=10, output_tokens=5, attempts=1)
    execution(at=at, latency_ms=180, cost="0.002", attempts=3)  # two retries
    execution(at=at, status="degraded", latency_ms=5000, cost="0")  # fallback: timeout
    execution(at=at, fallback_used=True, fallback_reason="rate_limited", latency_ms=300)
    execution(at=at, status="failed", latency_ms=None, cost="0.0005")
    execution(at=at, cached=True, cost="0", saved_usd=Decimal("0.003"), latency_ms=5)
    execution(at=at, status="cancelled", latency_ms=None)
    execution(at=at, status="running", latency_ms=None)  # not finished: not counted
    execution(at=at, agent="billing", latency_ms=40, model_choice="cheap:simple")
    execution(at=at_minute(1), latency_ms=100)

    assert traffic_rollups_refresh(now=MINUTE) == 3 + 2  # and the every-agent row of each minute

    minutes = rows(60, every=True)
    main = minutes[(floor(at, 60), "support")]
    assert (main.requests, main.succeeded, main.degraded, main.failed, main.cancelled) == (
        7, 4, 1, 1, 1,
    )  # fmt: skip
    assert (main.cached, main.fallbacks, main.retries) == (1, 2, 2)
    assert main.fallback_reasons == {"rate_limited": 1, "timeout": 1}
    assert main.cost_usd == Decimal("0.0055")
    assert main.saved_usd == Decimal("0.003")
    assert (main.input_tokens, main.output_tokens) == (10, 5)
    assert (main.latency_sum_ms, main.latency_count) == (80 + 180 + 5000 + 300 + 5, 5)
    expected = [0] * SIZE
    for latency in (80, 180, 5000, 300, 5):
        expected[next(i for i, b in enumerate(LATENCY_BUCKETS_MS) if latency <= b)] += 1
    assert main.latency_buckets == expected
    assert main.model_choices == {"standard": 7}
    assert minutes[(floor(at, 60), "billing")].model_choices == {"cheap:simple": 1}
    assert minutes[(floor(at_minute(1), 60), "support")].requests == 1
    every = minutes[(floor(at, 60), ALL_AGENTS)]
    assert (every.requests, every.fallbacks, every.cost_usd) == (8, 2, Decimal("0.0065"))
    assert every.model_choices == {"cheap:simple": 1, "standard": 7}
    assert sum(every.latency_buckets) == 6
    assert every.p95_ms == latency_percentile(every.latency_buckets, 0.95)
    assert main.p50_ms == latency_percentile(main.latency_buckets, 0.5)


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_hour_and_day_rows_are_the_sums_of_their_minute_rows() -> None:
    execution(at=at_minute(2), latency_ms=80, cost="0.001")
    execution(at=at_minute(50), latency_ms=900, cost="0.002")  # 09:47: the previous hour
    execution(at=at_minute(50), agent="billing", status="failed", latency_ms=None)

    traffic_rollups_refresh(now=MINUTE, minutes=60)

    hours = rows(3600)
    this_hour = hours[(floor(MINUTE, 3600), "support")]
    previous = hours[(floor(MINUTE, 3600) - timedelta(hours=1), "support")]
    assert (this_hour.requests, this_hour.cost_usd) == (1, Decimal("0.001"))
    assert (previous.requests, previous.cost_usd) == (1, Decimal("0.002"))
    assert hours[(floor(MINUTE, 3600) - timedelta(hours=1), "billing")].failed == 1
    days = rows(86400)
    day = days[(floor(MINUTE, 86400), "support")]
    assert (day.requests, day.cost_usd, day.latency_sum_ms) == (2, Decimal("0.003"), 980)
    assert sum(day.latency_buckets) == 2
    assert days[(floor(MINUTE, 86400), "billing")].requests == 1
    every_day = rows(86400, every=True)[(floor(MINUTE, 86400), ALL_AGENTS)]
    assert (every_day.requests, every_day.failed, every_day.p95_ms) == (3, 1, day.p95_ms)


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_refreshing_again_replaces_the_rows_and_counts_a_late_record_within_the_slice() -> None:
    execution(at=at_minute(5), cost="0.001")
    traffic_rollups_refresh(now=MINUTE)
    first = {key: (r.requests, r.cost_usd) for key, r in rows(60).items()}
    traffic_rollups_refresh(now=MINUTE)
    assert {key: (r.requests, r.cost_usd) for key, r in rows(60).items()} == first

    # Written to the database only now, for a minute 10 minutes back: still recomputed.
    execution(at=at_minute(5), cost="0.01")
    traffic_rollups_refresh(now=MINUTE + timedelta(minutes=5))
    (row,) = rows(60).values()
    assert (row.requests, row.cost_usd) == (2, Decimal("0.011"))
    (hour,) = rows(3600).values()
    assert (hour.requests, hour.cost_usd) == (2, Decimal("0.011"))


@pytest.mark.django_db
def test_a_record_later_than_the_recomputed_slice_is_not_counted() -> None:
    execution(at=at_minute(20))
    traffic_rollups_refresh(now=MINUTE)  # recomputes 10:23 to 10:37
    assert not TrafficRollup.objects.exists()


@pytest.mark.django_db
def test_a_minute_left_without_executions_loses_its_rows() -> None:
    lost = execution(at=at_minute(2), status="failed")
    traffic_rollups_refresh(now=MINUTE)
    assert {r.step_s for r in TrafficRollup.objects.all()} == {60, 3600, 86400}

    Execution.objects.filter(pk=lost.pk).update(status="running")
    traffic_rollups_refresh(now=MINUTE)
    assert not TrafficRollup.objects.exists()


def test_a_refresh_needs_at_least_one_minute() -> None:
    with pytest.raises(ValidationFailed, match="minutes: 0 must be at least 1"):
        traffic_rollups_refresh(now=MINUTE, minutes=0)


@pytest.mark.django_db
def test_rows_past_their_keep_are_pruned_in_batches() -> None:
    def row(step: int, age: timedelta) -> None:
        TrafficRollup.objects.create(
            step_s=step, start=floor(NOW - age, step), agent_name="support", requests=1
        )

    for hours in (49, 50, 51):
        row(60, timedelta(hours=hours))
    row(60, timedelta(hours=47))
    row(3600, timedelta(days=36))
    row(3600, timedelta(days=34))
    row(86400, timedelta(days=401))

    assert traffic_rollups_prune(now=NOW, batch=2) == 2 + 1 + 1
    assert traffic_rollups_prune(now=NOW, batch=2) == 1
    assert traffic_rollups_prune(now=NOW, batch=2) == 0
    kept = sorted((r.step_s, NOW - r.start) for r in TrafficRollup.objects.all())
    assert [step for step, _ in kept] == [60, 3600]


# --- series ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_1h_series_has_every_minute_zero_filled_oldest_first(
    django_assert_num_queries: Any,
) -> None:
    execution(at=at_minute(0), latency_ms=100, cost="0.25")  # the current, partial minute
    execution(at=at_minute(3), status="failed", latency_ms=None)
    execution(at=at_minute(59), status="degraded", latency_ms=2000)  # the oldest minute
    execution(at=at_minute(60))  # one minute before the window
    traffic_rollups_refresh(now=MINUTE, minutes=90)

    with django_assert_num_queries(1):
        series = traffic_series(window="1h", now=MINUTE)

    assert (series.window, series.step_s, len(series.points)) == ("1h", 60, 60)
    assert [p.at for p in series.points] == [
        floor(at_minute(59 - i), 60).timestamp() for i in range(60)
    ]
    by_age = {59 - i: p for i, p in enumerate(series.points)}
    assert by_age[0] == SeriesPoint(
        at=floor(MINUTE, 60).timestamp(), requests=1, succeeded=1, degraded=0, failed=0,
        fallbacks=0, cached=0, cost_usd=0.25,
        p50_ms=latency_percentile(_one(100), 0.5), p95_ms=latency_percentile(_one(100), 0.95),
    )  # fmt: skip
    assert (by_age[3].failed, by_age[3].p95_ms) == (1, None)
    assert (by_age[59].degraded, by_age[59].fallbacks) == (1, 1)
    empty = by_age[30]
    assert (empty.requests, empty.cost_usd, empty.p50_ms, empty.p95_ms) == (0, 0.0, None, None)
    assert sum(p.requests for p in series.points) == 3


def _one(latency: int) -> list[int]:
    buckets = [0] * SIZE
    buckets[next(i for i, b in enumerate(LATENCY_BUCKETS_MS) if latency <= b)] = 1
    return buckets


@pytest.mark.django_db
def test_a_series_sums_the_chosen_agents_and_merges_their_histograms() -> None:
    for _ in range(19):
        execution(at=at_minute(2), agent="support", latency_ms=90)
    execution(at=at_minute(2), agent="billing", latency_ms=1800)
    execution(at=at_minute(2), agent="search", latency_ms=50)
    traffic_rollups_refresh(now=MINUTE)
    assert TrafficRollup.objects.filter(agent_name=ALL_AGENTS, step_s=60).count() == 1

    both = traffic_series(window="1h", now=MINUTE, agents=frozenset({"support", "billing"}))
    point = both.points[-3]
    assert point.requests == 20
    # 19 in (75, 100] and 1 in (1500, 2000]: rank 19 of 20 is the last of the fast bucket.
    assert point.p95_ms == 100.0
    assert point.p50_ms == pytest.approx(75 + 25 * 10 / 19, abs=0.1)
    assert traffic_series(window="1h", now=MINUTE).points[-3].requests == 21
    alone = traffic_series(window="1h", now=MINUTE, agents=frozenset({"billing"})).points[-3]
    assert (alone.requests, alone.p95_ms) == (1, latency_percentile(_one(1800), 0.95))
    assert traffic_series(window="1h", now=MINUTE, agents=frozenset()).points[-3].requests == 0
    # "*" is not an agent's name: asking for it is asking for no agent.
    assert traffic_series(window="1h", now=MINUTE, agents=frozenset({"*"})).points[-3].requests == 0
    assert (
        traffic_series(window="1h", now=MINUTE, agents=frozenset({"*", "billing"})).points[-3]
        == alone
    )


@pytest.mark.parametrize(
    ("window", "step", "count"), [("24h", 3600, 24), ("7d", 3600, 168), ("30d", 86400, 30)]
)
@pytest.mark.django_db
def test_longer_windows_read_hour_or_day_rows(
    window: str, step: int, count: int, django_assert_num_queries: Any
) -> None:
    execution(at=MINUTE - WINDOWS[window] + timedelta(seconds=step + 1), cost="0.5")  # oldest
    execution(at=MINUTE - WINDOWS[window] - timedelta(seconds=1))  # before the oldest bucket
    execution(at=MINUTE, cost="0.25")
    traffic_rollups_refresh(now=MINUTE, minutes=A_MONTH)

    with django_assert_num_queries(1):
        series = traffic_series(window=window, now=MINUTE)

    assert (series.step_s, len(series.points)) == (step, count)
    assert series.points[-1].at == floor(MINUTE, step).timestamp()
    assert series.points[0].at == floor(MINUTE, step).timestamp() - step * (count - 1)
    assert [p.cost_usd for p in series.points if p.requests] == [0.5, 0.25]


@pytest.mark.django_db
def test_the_series_of_every_agent_come_from_one_query(django_assert_num_queries: Any) -> None:
    execution(at=at_minute(1), agent="support")
    execution(at=at_minute(1), agent="support")
    execution(at=at_minute(4), agent="billing", status="failed", latency_ms=None)
    traffic_rollups_refresh(now=MINUTE)

    with django_assert_num_queries(1):
        every = traffic_series_by_agent(window="1h", now=MINUTE)
    assert list(every) == ["billing", "support"]
    assert all(isinstance(s, Series) and len(s.points) == 60 for s in every.values())
    assert every["support"].points[-2].requests == 2
    assert every["billing"].points[-5].failed == 1
    assert sum(p.requests for p in every["billing"].points) == 1

    with django_assert_num_queries(1):
        chosen = traffic_series_by_agent(
            window="24h", now=MINUTE, agents=frozenset({"support", "idle"})
        )
    assert list(chosen) == ["idle", "support"]  # asked for: present, zeros without traffic
    assert sum(p.requests for p in chosen["idle"].points) == 0
    assert chosen["support"].points[-1].requests == 2


# --- totals ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_overview_totals_add_up_the_window_and_define_availability(
    django_assert_num_queries: Any,
) -> None:
    at = at_minute(10)
    for _ in range(5):
        execution(at=at, latency_ms=100, cost="0.1")
    execution(at=at, fallback_used=True, fallback_reason="circuit_open", latency_ms=300)
    execution(at=at, cached=True, cost="0", saved_usd=Decimal("0.2"), latency_ms=5)
    execution(at=at, status="degraded", latency_ms=50)  # fallback: timeout
    execution(at=at, status="failed", latency_ms=None, attempts=2)
    execution(at=at, status="cancelled", latency_ms=None)
    execution(at=at, agent="billing", cost="9")
    traffic_rollups_refresh(now=MINUTE)

    with django_assert_num_queries(1):
        totals = overview_totals(window="1h", now=MINUTE, agents=frozenset({"support"}))

    assert totals["requests"] == 10
    assert totals["availability"] == round(7 / 9, 4)  # succeeded / (requests - cancelled)
    assert totals["success_rate"] == 0.7
    assert (totals["errors"], totals["fallbacks"], totals["fallback_rate"]) == (1, 2, 0.2)
    assert totals["fallback_reasons"] == {"circuit_open": 1, "timeout": 1}
    assert (totals["cache_hit_rate"], totals["saved_usd"]) == (0.1, 0.2)
    assert totals["cost_usd"] == pytest.approx(0.5 + 4 * 0.001)
    assert totals["avg_latency_ms"] == round((500 + 300 + 5 + 50 + 0) / 8, 1)
    # Rank 7.6 of 8 is 60% into (250, 300], which holds only the 300 ms call.
    assert totals["p95_latency_ms"] == 280.0
    assert totals["retries"] == 1
    # The 60 buckets start 59 minutes 20 s before now: per day is per that span.
    span_days = (59 * 60 + 20) / 86400
    assert totals["since"] == floor(at_minute(59), 60)
    assert totals["requests_per_day"] == round(10 / span_days, 2)
    assert totals["cost_per_day_usd"] == round(totals["cost_usd"] / span_days, 6)
    assert overview_totals(window="1h", now=MINUTE)["requests"] == 11


@pytest.mark.django_db
def test_overview_totals_of_a_quiet_window_have_no_rates() -> None:
    totals = overview_totals(window="30d", now=NOW)
    assert (totals["requests"], totals["cost_usd"], totals["fallbacks"]) == (0, 0.0, 0)
    assert totals["availability"] is None
    assert totals["success_rate"] is None
    assert totals["p95_latency_ms"] is None
    assert totals["avg_latency_ms"] is None
