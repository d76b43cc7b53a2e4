"""Budget counters survive restarts and a shared state that lost its data: windows the state
does not know are rebuilt from the ledger before anything is admitted against them.

Measured before the fix: one embedded restart on the day a budget was created doubled it
($1.968 charged against $1.00); Redis restarted without its data let the ledger reach $0.442
against $0.25.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db.models import Sum

from agents.config.apply import config_apply, config_parse
from agents.runtime.types import ExecutionRequest, ExecutionStatus, Message
from budgets.models import Budget, SpendEntry

pytestmark = pytest.mark.django_db(transaction=True)  # the engine reads the database in threads

# Each call costs about $0.03 and reserves about $0.06: a $1 budget admits some 25 of them.
DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1000, output_usd_per_mtok: 1000}
agents:
  - {name: spender, model: m, max_tokens: 50, max_retries: 0, daily_budget_usd: 1}
"""
LIMIT = Decimal(1)


async def spend_until_refused(engine: Any, calls: int) -> list[ExecutionStatus]:
    statuses = []
    for _ in range(calls):
        result = await engine.execute(
            ExecutionRequest(
                agent="spender",
                messages=(Message("user", "what does this cost?"),),
                execution_id=str(uuid.uuid4()),
            )
        )
        statuses.append(result.status)
    assert engine.drainer is not None
    await engine.drainer.drain_now()
    return statuses


def charged() -> Decimal:
    return SpendEntry.objects.aggregate(total=Sum("cost_usd"))["total"] or Decimal(0)


async def new_engine() -> Any:
    from agents import engine as engines

    engine = engines.Engine()
    await engine.start()
    return engine


@pytest.fixture
def embedded(settings: Any) -> None:
    settings.REDIS_URL = None
    settings.EMBEDDED = True
    from agents import backends

    backends._memory_state = None  # this "process" starts with empty counters


async def test_an_embedded_restart_on_the_day_the_budget_was_created_does_not_reset_it(
    embedded: None,
) -> None:
    from agents import backends

    await sync_to_async(config_apply)(document=config_parse(DOC))
    first = await new_engine()
    before = await spend_until_refused(first, 40)
    await first.stop()
    assert ExecutionStatus.DEGRADED in before  # the budget stopped it
    spent = await sync_to_async(charged)()
    assert Decimal("0.9") < spent <= LIMIT

    backends._memory_state = None  # a restart: the process's counters are gone
    second = await new_engine()
    after = await spend_until_refused(second, 40)
    await second.stop()

    assert await sync_to_async(charged)() <= LIMIT
    assert after.count(ExecutionStatus.SUCCEEDED) <= 1  # what was left, at most one call


async def test_a_shared_state_that_lost_its_data_rebuilds_the_window_from_the_ledger(
    redis_url: str,
) -> None:
    from core.redis import get_async_redis

    await sync_to_async(config_apply)(document=config_parse(DOC))
    budget_id = await sync_to_async(lambda: Budget.objects.get().pk)()
    client = get_async_redis()
    # A budget id an earlier run of the suite used on this Redis: not this budget's counters.
    stale = [k async for k in client.scan_iter(match=f"bw:bg:budget:{budget_id}:*")]
    if stale:
        await client.delete(*stale)
    engine = await new_engine()
    before = await spend_until_refused(engine, 40)
    assert ExecutionStatus.DEGRADED in before

    # Redis restarted without its data (only this budget's keys here: other tests share it).
    keys = [k async for k in client.scan_iter(match=f"bw:bg:budget:{budget_id}:*")]
    assert keys
    await client.delete(*keys)

    after = await spend_until_refused(engine, 40)
    await engine.stop()
    assert await sync_to_async(charged)() <= LIMIT
    assert after.count(ExecutionStatus.SUCCEEDED) <= 1
