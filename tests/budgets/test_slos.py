"""SLIs, error budgets and burn rates per agent come from the traffic rollups (budgets.slos):
the latency SLI's slow count is taken at rollup time against each agent's threshold, and every
window is read in three queries, never from the executions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from agents.models import Agent
from budgets.models import ALL_AGENTS, TrafficRollup
from budgets.rollups import traffic_rollups_refresh
from budgets.slos import (
    SLO_WINDOWS,
    AgentSlo,
    budget_remaining,
    burn_rate,
    burn_state,
    slo_list,
)
from tests.budgets.conftest import NOW, execution

MINUTE = NOW.replace(minute=37, second=20)  # 10:37:20 UTC
A_MONTH = 60 * 24 * 31


def ago(**delta: float) -> datetime:
    return MINUTE - timedelta(**delta)


def agent(name: str = "support", **slo: Any) -> Agent:
    return Agent.objects.create(name=name, model="m", **slo)


def many(count: int, *, at: datetime, **fields: Any) -> None:
    for _ in range(count):
        execution(at=at, **fields)


def refresh(now: datetime = MINUTE) -> None:
    traffic_rollups_refresh(now=now, minutes=A_MONTH)


def one(**kwargs: Any) -> AgentSlo:
    (slo,) = slo_list(now=MINUTE, **kwargs)
    return slo


# --- the slow count --------------------------------------------------------------------------


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_the_slow_count_is_of_valid_executions_over_each_agents_own_threshold() -> None:
    agent("support", slo_latency_ms=500)
    agent("billing")  # the default, 2000 ms
    at = ago(minutes=3)
    for latency in (100, 500, 501, 3000):
        execution(at=at, latency_ms=latency)
    execution(at=at, status="degraded", latency_ms=900)  # slow, and bad for availability too
    execution(at=at, status="failed", latency_ms=None)  # no latency: not counted slow
    execution(at=at, status="cancelled", latency_ms=9000)  # not valid: never counted
    for latency in (1999, 2000, 2001):
        execution(at=at, agent="billing", latency_ms=latency)
    execution(at=at, agent="gone", latency_ms=2500)  # a deleted agent: the default threshold

    traffic_rollups_refresh(now=MINUTE)

    minute = datetime.fromtimestamp(int(at.timestamp()) // 60 * 60, UTC)
    slow = {
        row.agent_name: row.slow for row in TrafficRollup.objects.filter(step_s=60, start=minute)
    }
    assert slow == {"support": 3, "billing": 1, "gone": 1, ALL_AGENTS: 5}
    hour = TrafficRollup.objects.get(step_s=3600, agent_name="support")
    day = TrafficRollup.objects.get(step_s=86400, agent_name=ALL_AGENTS)
    assert (hour.slow, day.slow) == (3, 5)


# --- the SLIs --------------------------------------------------------------------------------


def test_burn_rates_and_budgets_follow_the_definitions() -> None:
    assert burn_rate(valid=1000, bad=1, objective=0.999) == pytest.approx(1.0)
    assert burn_rate(valid=1000, bad=20, objective=0.99) == pytest.approx(2.0)
    assert burn_rate(valid=0, bad=0, objective=0.999) is None
    assert budget_remaining(valid=10_000, bad=5, objective=0.999) == pytest.approx(0.5)
    assert budget_remaining(valid=10_000, bad=30, objective=0.999) == pytest.approx(-2.0)
    assert budget_remaining(valid=0, bad=0, objective=0.999) is None


@pytest.mark.parametrize(
    ("rates", "state"),
    [
        ({"1h": 14.5, "5m": 20, "6h": 1, "30m": 1}, "fast"),
        ({"1h": 14.4, "5m": 20, "6h": 1, "30m": 1}, None),  # over, not at
        ({"1h": 20, "5m": 3, "6h": 1, "30m": 1}, None),  # the burn already stopped
        ({"1h": 20, "5m": None, "6h": 7, "30m": 7}, "slow"),
        ({"1h": 10, "5m": 10, "6h": 6.1, "30m": 6.1}, "slow"),
        ({"1h": 10, "5m": 10, "6h": 6.1, "30m": 5.9}, None),
        ({}, None),
    ],
)
def test_the_burn_state_needs_both_windows_of_a_pair_over_its_threshold(
    rates: dict[str, float | None], state: str | None
) -> None:
    assert burn_state(rates) == state


@pytest.mark.django_db
def test_each_window_counts_its_valid_and_good_requests_for_both_slis() -> None:
    agent("support", slo_latency_ms=1000)
    many(96, at=ago(minutes=2), latency_ms=200)
    many(2, at=ago(minutes=2), latency_ms=1500)  # good for availability, slow
    execution(at=ago(minutes=2), status="degraded", latency_ms=300)
    execution(at=ago(minutes=2), status="failed", latency_ms=50)
    execution(at=ago(minutes=2), status="cancelled", latency_ms=5000)  # counted nowhere
    many(10, at=ago(minutes=20), status="failed", latency_ms=100)  # 30m, not 5m
    many(50, at=ago(hours=3), latency_ms=5000)  # 6h and longer
    many(40, at=ago(hours=12), latency_ms=100)  # 24h and 30d
    many(100, at=ago(days=10), latency_ms=100)  # 30d only
    many(5, at=ago(days=10), status="degraded", latency_ms=100)
    refresh()

    slo = one()
    availability, latency = slo.slis["availability"], slo.slis["latency"]
    assert (
        list(availability.windows) == list(SLO_WINDOWS) == ["5m", "30m", "1h", "6h", "24h", "30d"]
    )
    valid = {w: s.valid for w, s in availability.windows.items()}
    assert valid == {"5m": 100, "30m": 110, "1h": 110, "6h": 160, "24h": 200, "30d": 305}
    good = {w: s.good for w, s in availability.windows.items()}
    assert good == {"5m": 98, "30m": 98, "1h": 98, "6h": 148, "24h": 188, "30d": 288}
    assert availability.windows["5m"].ratio == pytest.approx(0.98)
    assert availability.windows["5m"].burn_rate == pytest.approx(0.02 / 0.001)
    assert availability.error_budget_remaining == pytest.approx(1 - 17 / (0.001 * 305))
    slow = {w: s.bad for w, s in latency.windows.items()}
    assert slow == {"5m": 2, "30m": 2, "1h": 2, "6h": 52, "24h": 52, "30d": 52}
    assert latency.objective == 0.95
    assert latency.windows["6h"].burn_rate == pytest.approx((52 / 160) / 0.05)
    assert latency.error_budget_remaining == pytest.approx(1 - 52 / (0.05 * 305))
    assert (slo.availability, slo.latency_ms, slo.latency_quantile) == (0.999, 1000, 0.95)


@pytest.mark.django_db
def test_the_budget_by_day_spends_down_to_the_budget_remaining() -> None:
    agent("support", slo_availability=0.99)
    many(100, at=ago(days=3), latency_ms=100)
    many(2, at=ago(days=3), status="failed", latency_ms=100)
    many(98, at=ago(days=1), latency_ms=3000)
    refresh()

    slo = one()
    points = slo.budget_by_day["availability"]
    assert len(points) == 31  # the UTC days the 720 hours of the window touch
    assert points[-1][0] == MINUTE.date()
    budget = {day: remaining for day, remaining in points}
    assert budget[date(2026, 3, 7)] == pytest.approx(1.0)  # nothing spent yet: all left
    assert budget[ago(days=3).date()] == pytest.approx(1 - 2 / (0.01 * 200))
    assert points[-1][1] == pytest.approx(slo.slis["availability"].error_budget_remaining)
    latency = dict(slo.budget_by_day["latency"])
    assert latency[ago(days=3).date()] == pytest.approx(1.0)
    assert latency[ago(days=1).date()] == pytest.approx(1 - 98 / (0.05 * 200))


@pytest.mark.django_db
def test_an_agent_without_traffic_has_no_ratios_and_others_come_sorted(
    django_assert_num_queries: Any,
) -> None:
    agent("zeta")
    agent("alpha", enabled=False)
    many(3, at=ago(minutes=1), agent="alpha")
    refresh()

    with django_assert_num_queries(3):  # the agents, the minute rows, the hour rows
        slos = slo_list(now=MINUTE)
    assert [s.agent for s in slos] == ["alpha", "zeta"]
    assert not slos[0].enabled
    quiet = slos[1].slis["availability"]
    assert {s.valid for s in quiet.windows.values()} == {0}
    assert {s.ratio for s in quiet.windows.values()} == {None}
    assert (quiet.error_budget_remaining, quiet.burn) == (None, None)
    assert slos[0].slis["availability"].error_budget_remaining == pytest.approx(1.0)


@pytest.mark.django_db
def test_a_restricted_list_shows_only_those_agents_and_many_agents_cost_the_same(
    django_assert_num_queries: Any,
) -> None:
    for index in range(12):
        agent(f"agent-{index:02}")
        many(2, at=ago(hours=index), agent=f"agent-{index:02}")
    refresh()

    with django_assert_num_queries(3):
        everyone = slo_list(now=MINUTE)
    assert len(everyone) == 12
    with django_assert_num_queries(3):
        mine = slo_list(agents=frozenset({"agent-03", "agent-07", "nobody"}), now=MINUTE)
    assert [s.agent for s in mine] == ["agent-03", "agent-07"]
    assert mine[0].slis["availability"].windows["6h"].valid == 2
    assert mine[1].slis["availability"].windows["6h"].valid == 0
    assert mine[1].slis["availability"].windows["24h"].valid == 2
    with django_assert_num_queries(1):
        assert slo_list(agents=frozenset({"nobody"}), now=MINUTE) == []
