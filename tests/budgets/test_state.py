"""Budget state, forecast and predictability, from the counters and the ledger."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.access.keys import generate_key
from agents.models import Agent, ApiKey
from budgets.metrics import budget_families
from budgets.selectors import (
    BudgetStatus,
    budget_get,
    budget_list,
    budget_scope_label,
    budget_spans,
    budget_state,
    budget_statuses,
)
from budgets.services import budgets_observe
from core.errors import NotFound
from tests.budgets.conftest import NOW, Counters, budget, spend


@pytest.mark.parametrize(
    ("used", "paused", "expected"),
    [
        pytest.param("0", False, ("ok", None), id="nothing-used"),
        pytest.param("49.99", False, ("ok", None), id="just-under-warn"),
        pytest.param("50", False, ("warning", "warn"), id="at-warn"),
        pytest.param("79.99", False, ("warning", "warn"), id="just-under-alert"),
        pytest.param("80", False, ("warning", "alert"), id="at-alert"),
        pytest.param("99.99", False, ("warning", "alert"), id="nearly-all"),
        pytest.param("100", False, ("exceeded", None), id="all-of-it"),
        pytest.param("130", False, ("exceeded", None), id="beyond"),
        pytest.param("130", True, ("paused", None), id="paused-wins"),
        pytest.param("0", True, ("paused", None), id="paused-unused"),
    ],
)
def test_the_state_follows_the_thresholds(
    used: str, paused: bool, expected: tuple[str, str | None]
) -> None:
    state = budget_state(
        limit=Decimal(100), used=Decimal(used), paused=paused, warn_at_pct=50, alert_at_pct=80
    )
    assert state == expected


def test_thresholds_are_the_budgets_own() -> None:
    kwargs: dict[str, Any] = {"limit": Decimal(100), "paused": False}
    assert budget_state(used=Decimal(60), warn_at_pct=70, alert_at_pct=90, **kwargs)[0] == "ok"
    assert budget_state(used=Decimal(91), warn_at_pct=70, alert_at_pct=90, **kwargs) == (
        "warning",
        "alert",
    )


def test_a_zero_budget_is_exceeded_from_the_start() -> None:
    assert budget_state(
        limit=Decimal(0), used=Decimal(0), paused=False, warn_at_pct=50, alert_at_pct=80
    ) == ("exceeded", None)


@pytest.mark.django_db
def test_spent_and_reserved_count_against_the_limit_and_the_forecast_extrapolates_the_last_hour(
    django_assert_num_queries: Any,
) -> None:
    b = budget(limit="100")
    counters = Counters()
    (span,) = budget_spans([b], now=NOW)
    counters.settle(span.key, 40_000_000)  # $40 spent so far today
    # Ledger: $6 in the last hour (the rate), $30 earlier (not part of the rate).
    spend("30", at=NOW - timedelta(hours=3))
    spend("2", at=NOW - timedelta(minutes=50))
    spend("4", at=NOW - timedelta(minutes=10))

    with django_assert_num_queries(1):
        (status,) = budget_statuses(spans=[span], usage=counters((span.key,)), now=NOW)

    assert (status.spent_usd, status.reserved_usd) == (Decimal(40), Decimal(0))
    assert status.limit_usd == Decimal(100)
    assert status.remaining_usd == Decimal(60)
    assert status.rate_usd_per_hour == Decimal(6)
    # 10:00 UTC: 14 hours left at $6/h.
    assert status.forecast_usd == Decimal(40 + 6 * 14)
    assert status.predictability == 1.24
    assert status.state == "ok"
    assert status.window_id == "2026-03-11"
    assert status.window_ends_at == datetime(2026, 3, 12, tzinfo=UTC)


@pytest.mark.django_db
def test_early_in_the_window_the_rate_is_taken_since_it_began() -> None:
    b = budget(limit="100")
    now = NOW.replace(hour=0, minute=30)
    spend("5", at=now - timedelta(minutes=45))  # yesterday: not this window's rate
    spend("1", at=now - timedelta(minutes=15))
    (span,) = budget_spans([b], now=now)

    (status,) = budget_statuses(spans=[span], usage={}, now=now)

    assert status.rate_usd_per_hour == Decimal(2)  # $1 in 30 minutes
    assert status.forecast_usd == Decimal("47.000000")  # 23.5 h left


@pytest.mark.django_db
def test_reservations_count_towards_the_state_and_the_remaining_amount() -> None:
    b = budget(limit="10", warn_at_pct=50, alert_at_pct=80)
    (span,) = budget_spans([b], now=NOW)
    usage = {span.key: (4_000_000, 4_500_000)}  # $4 spent, $4.50 reserved

    (status,) = budget_statuses(spans=[span], usage=usage, now=NOW)

    assert (status.state, status.threshold) == ("warning", "alert")
    assert status.remaining_usd == Decimal("1.5")


@pytest.mark.django_db
def test_an_active_raise_lifts_the_limit_and_an_expired_one_does_not() -> None:
    raised = budget(limit="10", raise_usd=Decimal(5), raise_until=NOW + timedelta(hours=1))
    lapsed = budget(
        "agent",
        agent=Agent.objects.create(name="a", model="m"),
        limit="10",
        raise_usd=Decimal(5),
        raise_until=NOW - timedelta(seconds=1),
    )
    spans = budget_spans([raised, lapsed], now=NOW)
    usage = {span.key: (12_000_000, 0) for span in spans}

    active, expired = budget_statuses(spans=spans, usage=usage, now=NOW)

    assert (active.limit_usd, active.base_limit_usd, active.raise_usd) == (
        Decimal(15),
        Decimal(10),
        Decimal(5),
    )
    assert active.state == "warning"
    assert (expired.limit_usd, expired.raise_usd, expired.raise_until) == (Decimal(10), None, None)
    assert expired.state == "exceeded"


@pytest.mark.django_db
def test_a_paused_budget_has_nothing_remaining() -> None:
    b = budget(limit="10", paused=True)
    (span,) = budget_spans([b], now=NOW)
    (status,) = budget_statuses(spans=[span], usage={}, now=NOW)
    assert (status.state, status.remaining_usd) == ("paused", Decimal(0))


@pytest.mark.django_db
def test_windows_roll_over_at_midnight_in_the_budgets_time_zone() -> None:
    b = budget(timezone="America/New_York")
    monthly = budget("global", window="monthly", limit="100")
    before = datetime(2026, 3, 12, 3, 59, tzinfo=UTC)  # 23:59 in New York (EDT from 8 March)
    after = before + timedelta(minutes=2)

    (old, month_before) = budget_spans([b, monthly], now=before)
    (new, month_after) = budget_spans([b, monthly], now=after)

    assert (old.window_id, new.window_id) == ("2026-03-11", "2026-03-12")
    assert old.key != new.key
    assert old.end == new.start == datetime(2026, 3, 12, 4, 0, tzinfo=UTC)
    assert month_before.key == month_after.key == f"budget:{monthly.pk}:2026-03"

    # Spend settled in the old window does not count in the new one.
    counters = Counters()
    counters.settle(old.key, 9_000_000)
    (status,) = budget_statuses(spans=[new], usage=counters((new.key,)), now=after)
    assert (status.spent_usd, status.state) == (Decimal(0), "ok")


@pytest.mark.django_db
def test_a_budget_covers_only_its_agents_or_keys_ledger(django_assert_num_queries: Any) -> None:
    support = Agent.objects.create(name="support", model="m")
    new = generate_key()
    key = ApiKey.objects.create(
        name="k", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )
    budgets = [
        budget(limit="100"),
        budget("agent", agent=support, limit="100"),
        budget("api_key", api_key=key, limit="100"),
    ]
    spend("1", at=NOW - timedelta(minutes=30), agent="support")
    spend("2", at=NOW - timedelta(minutes=30), agent="billing", api_key_id=key.pk)

    with django_assert_num_queries(1):
        listed = budget_list()
    spans = budget_spans(listed, now=NOW)
    with django_assert_num_queries(1):
        statuses = budget_statuses(spans=spans, usage={}, now=NOW)

    rates = {s.scope: s.rate_usd_per_hour for s in statuses}
    assert rates == {"global": Decimal(3), "agent": Decimal(1), "api_key": Decimal(2)}
    assert [budget_scope_label(b) for b in listed] == [
        "global",
        "agent:support",
        f"api_key:{key.prefix}",
    ]
    assert len(budgets) == 3


@pytest.mark.django_db
def test_a_restricted_key_sees_its_agents_budgets_and_its_own() -> None:
    from agents.access.auth import Principal

    support = Agent.objects.create(name="support", model="m")
    billing = Agent.objects.create(name="billing", model="m")
    new = generate_key()
    key = ApiKey.objects.create(
        name="k", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )
    everyone = budget()
    mine = budget("agent", agent=support)
    theirs = budget("agent", agent=billing)
    own_key = budget("api_key", api_key=key)
    limited = Principal(key.pk, key.prefix, frozenset({"read"}), frozenset({"support"}))
    unlimited = Principal(key.pk, key.prefix, frozenset({"read"}), frozenset())

    assert [b.pk for b in budget_list(principal=limited)] == [mine.pk, own_key.pk]
    assert len(budget_list(principal=unlimited)) == 4
    assert budget_get(budget_id=mine.pk, principal=limited) == mine
    for hidden in (everyone, theirs):
        with pytest.raises(NotFound):
            budget_get(budget_id=hidden.pk, principal=limited)


def _gauge(families: list[Any], name: str, scope: str) -> float | None:
    (family,) = [f for f in families if f.name == name]
    values = [s.value for s in family.samples if s.labels == {"scope": scope}]
    return values[0] if values else None


@pytest.mark.django_db
def test_observed_budgets_become_remaining_limit_and_forecast_gauges_per_scope() -> None:
    agent = Agent.objects.create(name="observed", model="m")
    b = budget("agent", agent=agent, limit="20")
    monthly = budget("agent", agent=agent, limit="300", window="monthly")
    counters = Counters()
    (span, _) = budget_spans([b, monthly], now=NOW)
    counters.settle(span.key, 5_000_000)
    spend("1", at=NOW - timedelta(minutes=30), agent="observed")

    statuses = budgets_observe(now=NOW, usage_reader=counters)
    families = budget_families(statuses)

    assert len(statuses) == 2
    assert _gauge(families, "agent_budget_remaining_dollars", "agent:observed") == 15.0
    assert _gauge(families, "agent_budget_remaining_dollars", "agent:observed:monthly") == 300.0
    assert _gauge(families, "agent_budget_limit_dollars", "agent:observed") == 20.0
    # $1 over the last hour, 14 hours left.
    assert _gauge(families, "agent_budget_forecast_dollars", "agent:observed") == 5 + 1 * 14
    assert _gauge(families, "agent_budget_forecast_ratio", "agent:observed") == pytest.approx(
        19 / 20
    )


def test_a_budget_without_a_limit_has_no_forecast_ratio() -> None:
    import math
    from dataclasses import replace

    status = BudgetStatus(
        id=1, scope="global", target="*", label="global", window="daily", window_id="d",
        window_starts_at=NOW, window_ends_at=NOW, timezone="UTC", limit_usd=Decimal(0),
        base_limit_usd=Decimal(0), spent_usd=Decimal(0), reserved_usd=Decimal(0),
        remaining_usd=Decimal(0), forecast_usd=Decimal(0), rate_usd_per_hour=Decimal(0),
        predictability=None, state="exceeded", threshold=None, warn_at_pct=80, alert_at_pct=95,
        paused=False, raise_usd=None, raise_until=None,
    )  # fmt: skip

    families = budget_families([status, replace(status, id=2, label="global:monthly")])

    ratio = _gauge(families, "agent_budget_forecast_ratio", "global")
    assert ratio is not None
    assert math.isnan(ratio)


# --- reading the counters from a job -------------------------------------------------------


async def _settle(store: Any, key: str, micros: int) -> None:
    """Spend ``micros`` on ``key`` as an execution does: reserved, then settled."""
    import uuid

    from agents.runtime.state import BreakerConfig, BudgetHold, Completion, WindowInit

    entry_id = str(uuid.uuid4())
    await store.budget_prepare((WindowInit(key, 0, 86_400.0),))
    assert (
        await store.budget_reserve((BudgetHold(key, 10**9, micros, 86_400.0),), entry_id, 60.0)
    )[0]
    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=BreakerConfig(),
            entry_id=entry_id,
            budget_settlements=((key, micros),),
        )
    )


def test_a_job_in_embedded_mode_reads_the_process_counters(settings: Any) -> None:
    """The embedded worker runs jobs in threads of the serve process: they must see the very
    MemoryState the traffic fills."""
    import asyncio
    import uuid

    from agents.backends import process_memory_state
    from budgets.selectors import budget_usage_read

    settings.EMBEDDED = True
    key = f"budget:0:{uuid.uuid4().hex}"
    asyncio.run(_settle(process_memory_state(), key, 1234))

    assert budget_usage_read((key,)) == {key: (1234, 0)}
    assert budget_usage_read(()) == {}


def test_a_job_in_distributed_mode_reads_the_counters_in_redis(
    redis_url: str, settings: Any
) -> None:
    import asyncio
    import uuid

    import redis.asyncio as aioredis

    from agents.runtime.redis_state import RedisState
    from budgets.selectors import budget_usage_read

    settings.EMBEDDED = False
    settings.REDIS_URL = redis_url
    key = f"budget:0:{uuid.uuid4().hex}"

    async def settle() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await _settle(RedisState(client, prefix="bw"), key, 4321)
        finally:
            await client.aclose()

    asyncio.run(settle())

    assert budget_usage_read((key,)) == {key: (4321, 0)}
    assert budget_usage_read((key,)) == {key: (4321, 0)}  # a second loop, a second client
