"""Budgets in the executor: reservation before the call, settlement after, fail closed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import replace
from decimal import Decimal

from agents.runtime.budgets import holds_for, window_bounds
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from agents.runtime.types import (
    BudgetRule,
    ChatResponse,
    ExecutionRequest,
    ExecutionStatus,
    Message,
    Usage,
)
from tests.agents.runtime.support import Harness, agent, deployment, harness

GLOBAL_1USD = BudgetRule(id=1, scope="global", target="*", window="daily", limit_usd=Decimal("1"))


def _request(text: str = "hello", **extra: object) -> ExecutionRequest:
    return ExecutionRequest(
        agent="support",
        messages=(Message("user", text),),
        execution_id=str(uuid.uuid4()),
        **extra,  # type: ignore[arg-type]
    )


async def _spent(h: Harness, rule: BudgetRule = GLOBAL_1USD) -> tuple[int, int]:
    key = holds_for((rule,), h.clock.now(), 0)[0].key
    usage: dict[str, tuple[int, int]] = await h.state.inner.budget_usage((key,))
    return usage[key]


async def test_an_exhausted_budget_degrades_before_any_upstream_call() -> None:
    h = harness([agent(max_tokens=10)])
    h.config.rules = (replace(GLOBAL_1USD, limit_usd=Decimal("0.000001")),)
    result = await h.executor.execute(_request())
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "budget_exceeded"
    assert result.output == DEFAULT_FALLBACK_MESSAGES["budget"]
    assert h.provider.calls == []


async def test_a_paused_budget_refuses_everything() -> None:
    h = harness()
    h.config.rules = (replace(GLOBAL_1USD, paused=True),)
    result = await h.executor.execute(_request())
    assert result.fallback_reason == "budget_exceeded"
    assert h.provider.calls == []


async def test_a_temporary_raise_admits_until_it_ends() -> None:
    h = harness([agent(max_tokens=100)])
    now = h.clock.now()
    h.config.rules = (
        replace(
            GLOBAL_1USD,
            limit_usd=Decimal("0"),
            raise_usd=Decimal("1"),
            raise_until=now + 60,
        ),
    )
    assert (await h.executor.execute(_request())).status == ExecutionStatus.SUCCEEDED
    h.clock.advance(61)
    assert (await h.executor.execute(_request())).fallback_reason == "budget_exceeded"


async def test_the_settled_cost_replaces_the_reservation() -> None:
    h = harness([agent(max_tokens=1000)])
    h.config.rules = (GLOBAL_1USD,)
    result = await h.executor.execute(_request())
    assert result.status == ExecutionStatus.SUCCEEDED
    # 10 input tokens at $1/M + 5 output at $2/M = 20 micro-USD, nothing left reserved.
    assert await _spent(h) == (20, 0)
    assert result.cost_usd == Decimal("0.00002")


async def test_concurrent_executions_never_overspend_and_the_most_that_fit_are_admitted() -> None:
    # Worst case per execution: 6 prompt tokens * $1/M + 9997 * $2/M = 20000 micro-USD ($0.02).
    h = harness([agent(max_tokens=9997, fallback_models=(), max_retries=0)])
    h.config.rules = (GLOBAL_1USD,)
    gate = asyncio.Event()
    original = h.provider.chat

    async def held(*args, **kwargs):  # type: ignore[no-untyped-def]
        await gate.wait()
        return ChatResponse("ok", (), Usage(6, 9997), "stop")  # each spends its worst case

    h.provider.chat = held  # type: ignore[method-assign]
    tasks = [asyncio.create_task(h.executor.execute(_request())) for _ in range(200)]
    for _ in range(50):
        await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*tasks)
    h.provider.chat = original  # type: ignore[method-assign]
    succeeded = [r for r in results if r.status == ExecutionStatus.SUCCEEDED]
    refused = [r for r in results if r.fallback_reason == "budget_exceeded"]
    assert len(succeeded) == 50  # $1.00 / $0.02
    assert len(refused) == 150
    spent, reserved = await _spent(h)
    assert spent == 1_000_000
    assert reserved == 0


async def test_a_model_without_a_price_is_refused_under_a_budget() -> None:
    free = replace(deployment(1, "primary"), input_usd_per_mtok=None, output_usd_per_mtok=None)
    h = harness(deployments=[free, deployment(2, "backup")])
    h.config.rules = (GLOBAL_1USD,)
    result = await h.executor.execute(_request())
    assert result.status == ExecutionStatus.FAILED
    assert result.error is not None
    assert result.error["type"] == "price_unknown"
    assert "primary (deployment 1)" in result.error["message"]
    assert h.provider.calls == []


async def test_without_a_budget_an_unpriced_model_runs_and_costs_nothing() -> None:
    free = replace(deployment(1, "primary"), input_usd_per_mtok=None, output_usd_per_mtok=None)
    h = harness(deployments=[free, deployment(2, "backup")])
    result = await h.executor.execute(_request())
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.cost_usd == 0


async def test_a_cancelled_execution_settles_what_it_used_and_frees_its_reservation() -> None:
    h = harness([agent(max_tokens=500)])
    h.config.rules = (GLOBAL_1USD,)

    async def endless(*args, **kwargs):  # type: ignore[no-untyped-def]
        on_token = kwargs.get("on_token")
        assert on_token is not None
        await on_token("partial answer streamed ")
        await asyncio.Event().wait()

    h.provider.chat = endless  # type: ignore[method-assign]

    async def sink(text: str) -> None:
        return None

    task = asyncio.create_task(h.executor.execute(_request(), on_token=sink))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    spent, reserved = await _spent(h)
    assert reserved == 0
    assert spent > 0  # the streamed tokens were charged
    assert h.records.results[-1].status == ExecutionStatus.CANCELLED


async def test_retries_reserve_their_own_worst_case_before_calling() -> None:
    from agents.runtime.errors import Capacity

    # Room for exactly one attempt's worst case (6*1 + 100*2 = 206 micro-USD).
    h = harness([agent(max_tokens=100, fallback_models=(), max_retries=3)])
    h.config.rules = (replace(GLOBAL_1USD, limit_usd=Decimal("0.000300")),)
    h.provider.scripts["primary"] = [
        Capacity("503", status=503, input_tokens=6, output_tokens=50),
        Capacity("503", status=503),
    ]
    result = await h.executor.execute(_request())
    assert result.fallback_reason == "budget_exceeded"
    assert len(h.provider.calls) == 1  # the retry could not reserve, so it never started
    spent, reserved = await _spent(h)
    assert spent == 106  # what the failed attempt consumed
    assert reserved == 0


def test_windows_follow_the_budgets_time_zone_and_roll_over_at_local_midnight() -> None:
    rule = replace(GLOBAL_1USD, timezone="America/New_York")
    # 2026-03-08 is a 23-hour day in New York (DST starts).
    window, start, end = window_bounds(rule, 1772960400.0)  # 2026-03-08 09:00 UTC
    assert window == "2026-03-08"
    assert end - start == 23 * 3600
    monthly = replace(rule, window="monthly")
    assert window_bounds(monthly, 1772960400.0)[0] == "2026-03"


async def test_a_short_task_goes_to_the_cheap_model_and_says_why() -> None:
    h = harness(
        [agent(cheap_model="cheap", cheap_max_input_tokens=50)],
        [deployment(1, "primary"), deployment(2, "backup"), deployment(3, "cheap")],
    )
    short = await h.executor.execute(_request("hi"))
    assert (short.model, short.model_choice) == ("cheap", "cheap:simple")
    long = await h.executor.execute(_request("word " * 100))
    assert (long.model, long.model_choice) == ("primary", "standard")
    hinted = await h.executor.execute(_request("hi", metadata={"complexity": "complex"}))
    assert hinted.model_choice == "standard"


async def test_as_the_budget_runs_low_everything_moves_to_the_cheap_model() -> None:
    h = harness(
        [agent(cheap_model="cheap", cheap_max_input_tokens=0, max_tokens=100)],
        [deployment(1, "primary"), deployment(2, "backup"), deployment(3, "cheap")],
    )
    # $0.001 budget; each call reserves ~206 micro-USD and spends 20.
    h.config.rules = (replace(GLOBAL_1USD, limit_usd=Decimal("0.001")),)
    choices = []
    for _ in range(45):
        result = await h.executor.execute(_request("word " * 30))
        choices.append(result.model_choice)
    assert choices[0] == "standard"
    assert "cheap:budget_low" in choices


async def test_a_cancel_during_a_retry_backoff_settles_spend_and_frees_the_reservation() -> None:
    import contextlib
    import random

    from agents.runtime.clock import SystemClock
    from agents.runtime.errors import ProviderError
    from agents.runtime.executor import Executor, RetryPolicy
    from agents.runtime.memory import MemoryState
    from agents.runtime.ports import ListRecords
    from tests.agents.runtime.support import StaticConfig

    class Cut:
        async def chat(self, *args: object, **kwargs: object) -> ChatResponse:
            raise ProviderError("cut", input_tokens=100, output_tokens=50)

    clock = SystemClock()  # a real backoff sleep, so the cancel lands inside it
    state = MemoryState(clock)
    records = ListRecords()
    executor = Executor(
        config=StaticConfig(
            {"support": agent(fallback_models=())},
            {"primary": (deployment(1, "primary"),)},
            rules=(replace(GLOBAL_1USD, limit_usd=Decimal("10")),),
        ),
        state=state,
        providers=Cut(),
        clock=clock,
        records=records,
        retry=RetryPolicy(base_s=2.0, cap_s=2.0),
        rng=random.Random(1),
    )
    task = asyncio.create_task(executor.execute(_request()))
    await asyncio.sleep(0.2)  # the first attempt failed; the retry is waiting
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    result = records.results[-1]
    assert result.status == ExecutionStatus.CANCELLED
    key = holds_for((GLOBAL_1USD,), clock.now(), 0)[0].key
    spent, reserved = (await state.budget_usage((key,)))[key]
    assert reserved == 0
    assert spent == 200 == round(result.cost_usd * 1_000_000)  # 100*$1 + 50*$2 per M
    assert await state.in_flight((1,)) == {1: 0}


async def test_spend_goes_to_the_window_of_the_executions_created_at_even_at_midnight() -> None:
    """The ledger files an execution under its created_at; the counters must use the same
    window, or an execution started a moment before midnight shows up as drift."""
    h = harness([agent(max_tokens=1000)])
    h.config.rules = (GLOBAL_1USD,)
    _, _, midnight = window_bounds(GLOBAL_1USD, h.clock.now())
    h.clock.advance(midnight - 0.0005 - h.clock.now())
    read = h.clock.now

    def ticking() -> float:  # every later read of the clock is 1 ms later: past midnight
        value = read()
        h.clock.advance(0.001)
        return value

    h.clock.now = ticking  # type: ignore[method-assign]
    result = await h.executor.execute(_request())
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.created_at < midnight
    before, after = (holds_for((GLOBAL_1USD,), t, 0)[0].key for t in (midnight - 1, midnight))
    usage = await h.state.inner.budget_usage((before, after))
    assert usage[before] == (20, 0)
    assert usage[after] == (0, 0)
