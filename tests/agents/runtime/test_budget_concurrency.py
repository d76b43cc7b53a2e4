"""Budgets under concurrency, through the real :class:`Executor` (the issue's acceptance tests).

"$1.00 budget, 200 concurrent executions each able to cost up to $0.02, from 4 processes on
Redis, 20 repetitions: never more than $1.00 settled, and the number admitted is the most that
fits (50)" -- and the same with 4 threads (each with its event loop) sharing one MemoryState.
Every provider call waits at a start line until all 200 executions have been admitted or
refused, so all 200 reservations race; then each admitted call costs exactly its worst case.

"1,000 executions with 20% cancelled or timed out: outstanding reservations return to 0;
counters equal the ledger exactly" -- on both stores, the ledger being the recorded results.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any, Protocol

import pytest
import redis.asyncio as aioredis

from agents.runtime.budgets import holds_for, to_micros, worst_case_micros
from agents.runtime.clock import SystemClock
from agents.runtime.errors import ProviderError, Timeout
from agents.runtime.executor import Executor, RetryPolicy
from agents.runtime.memory import MemoryState
from agents.runtime.ports import ListRecords
from agents.runtime.providers.base import OnToken, estimate_messages
from agents.runtime.redis_state import RedisState
from agents.runtime.state import BreakerConfig, StateStore
from agents.runtime.types import (
    AgentConfig,
    BudgetRule,
    ChatRequest,
    ChatResponse,
    Deployment,
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    Usage,
)
from tests.agents.runtime.support import StaticConfig, deployment

WORKERS = 4
PER_WORKER = 50  # 200 concurrent executions in all
REPETITIONS = 20
WORST_MICROS = 20_000  # $0.02
LIMIT = BudgetRule(id=1, scope="global", target="*", window="daily", limit_usd=Decimal("1.00"))
FITS = 50  # $1.00 / $0.02
PROMPT = "hello"
MAX_TOKENS = 1_000
INPUT_PRICE = Decimal("10")
INPUT_TOKENS = estimate_messages((Message("user", PROMPT),))
# An output price that makes the worst case (prompt estimate + max_tokens) exactly $0.02.
OUTPUT_PRICE = (Decimal(WORST_MICROS) - INPUT_PRICE * INPUT_TOKENS) / MAX_TOKENS
WAIT_S = 60.0  # for a barrier or a result; a test that waits this long has failed


def _deployment(
    *, input_price: Decimal = INPUT_PRICE, output_price: Decimal = OUTPUT_PRICE
) -> Deployment:
    return replace(
        deployment(1, "primary", max_concurrency=10_000),
        input_usd_per_mtok=input_price,
        output_usd_per_mtok=output_price,
    )


AGENT = AgentConfig(name="support", model="primary", timeout_s=30.0, max_tokens=MAX_TOKENS)
CONFIG = StaticConfig({"support": AGENT}, {"primary": (_deployment(),)}, rules=(LIMIT,))


def _key(rule: BudgetRule = LIMIT) -> str:
    return holds_for((rule,), time.time(), 0)[0].key


def _request(text: str = PROMPT, **extra: Any) -> ExecutionRequest:
    return ExecutionRequest(
        agent="support",
        messages=(Message("user", text),),
        execution_id=str(uuid.uuid4()),
        **extra,
    )


# --- the start line ---


class Barrier(Protocol):
    def wait(self, timeout: float | None = None) -> int: ...


class GatedProvider:
    """Holds every call at the start line; once opened, answers with the call's worst case."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0  # executions at the start line or already over (refused)
        self.calls = 0
        self.all_in = asyncio.Event()
        self.start = asyncio.Event()

    def finished(self, task: asyncio.Task[ExecutionResult]) -> None:
        self.arrive()  # refused, or (harmless: the start was given) answered

    def arrive(self) -> None:
        self.arrived += 1
        if self.arrived >= self.expected:
            self.all_in.set()

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        self.calls += 1
        self.arrive()
        await self.start.wait()
        usage = Usage(estimate_messages(request.messages), request.max_tokens)
        return ChatResponse("done", (), usage, "stop")


Outcome = tuple[str, str | None, str]  # status, fallback reason, cost


async def _race(
    state_for: Callable[[int], StateStore], barrier: Barrier, report: Callable[[Any], None]
) -> None:
    """Each repetition: wait for everyone, submit PER_WORKER executions, wait until each is at
    the start line or refused, wait for everyone (the parent looks at the reservations), wait
    for the start, finish, report."""
    for repetition in range(REPETITIONS):
        provider = GatedProvider(PER_WORKER)
        executor = Executor(
            config=CONFIG,
            state=state_for(repetition),
            providers=provider,
            clock=SystemClock(),
            records=ListRecords(),
        )
        await asyncio.to_thread(barrier.wait, WAIT_S)  # ready
        tasks = [asyncio.create_task(executor.execute(_request())) for _ in range(PER_WORKER)]
        for task in tasks:
            task.add_done_callback(provider.finished)
        await asyncio.wait_for(provider.all_in.wait(), WAIT_S)
        await asyncio.to_thread(barrier.wait, WAIT_S)  # all submitted
        await asyncio.to_thread(barrier.wait, WAIT_S)  # go
        provider.start.set()
        results = await asyncio.gather(*tasks)
        outcomes: list[Outcome] = [
            (r.status.value, r.fallback_reason, str(r.cost_usd)) for r in results
        ]
        report((provider.calls, outcomes))


def _process(url: str, prefixes: list[str], barrier: Barrier, results: Any) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        try:
            await _race(lambda n: RedisState(client, prefix=prefixes[n]), barrier, results.put)
        finally:
            await client.aclose()

    asyncio.run(main())


def _thread(states: list[MemoryState], barrier: Barrier, results: queue.Queue[Any]) -> None:
    asyncio.run(_race(lambda n: states[n], barrier, results.put))


async def _drive(
    usage: Callable[[int, str], Any], barrier: Barrier, results: Any, workers: list[Any]
) -> None:
    """The parent's side of the race: the checks of every repetition."""
    straddled = 0
    for repetition in range(REPETITIONS):
        key = _key()
        await asyncio.to_thread(barrier.wait, WAIT_S)  # ready
        await asyncio.to_thread(barrier.wait, WAIT_S)  # all submitted
        in_flight = await usage(repetition, key)  # all admitted or refused, none finished
        await asyncio.to_thread(barrier.wait, WAIT_S)  # go
        calls, outcomes = 0, []
        for _ in workers:
            got_calls, got = await asyncio.to_thread(results.get, True, WAIT_S)
            calls += got_calls
            outcomes += got
        if _key() != key:  # the budget's day ended during this repetition: a new window
            straddled += 1
            continue
        assert in_flight == (0, FITS * WORST_MICROS)
        assert len(outcomes) == WORKERS * PER_WORKER
        succeeded = [cost for status, _, cost in outcomes if status == "succeeded"]
        refused = [reason for status, reason, _ in outcomes if status == "degraded"]
        assert (calls, len(succeeded)) == (FITS, FITS)
        assert refused == ["budget_exceeded"] * (WORKERS * PER_WORKER - FITS)
        assert sum(Decimal(cost) for cost in succeeded) == Decimal("1.00")
        assert await usage(repetition, key) == (FITS * WORST_MICROS, 0)
    assert straddled <= 1


def test_the_scenario_makes_each_execution_cost_at_most_two_cents() -> None:
    assert worst_case_micros((_deployment(),), INPUT_TOKENS, MAX_TOKENS) == WORST_MICROS
    cost = (INPUT_PRICE * INPUT_TOKENS + OUTPUT_PRICE * MAX_TOKENS) / 1_000_000
    assert cost == Decimal("0.02")


@pytest.fixture
def ctx() -> SpawnContext:
    return multiprocessing.get_context("spawn")


@pytest.fixture
def processes() -> Iterator[list[SpawnProcess]]:
    started: list[SpawnProcess] = []
    yield started
    for process in started:  # only when a test failed half-way
        if process.is_alive():
            process.kill()
        process.join(5)


@pytest.fixture
async def prefixes(redis_url: str) -> AsyncIterator[list[str]]:
    names = [f"bwtest:{uuid.uuid4().hex}" for _ in range(REPETITIONS)]
    yield names
    client = aioredis.Redis.from_url(redis_url)
    for name in names:
        keys = [key async for key in client.scan_iter(match=f"{name}:*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


async def test_four_processes_on_redis_never_settle_more_than_the_budget_and_admit_all_that_fits(
    redis_url: str, prefixes: list[str], ctx: SpawnContext, processes: list[SpawnProcess]
) -> None:
    barrier = ctx.Barrier(WORKERS + 1)
    results = ctx.Queue()
    for _ in range(WORKERS):
        process = ctx.Process(target=_process, args=(redis_url, prefixes, barrier, results))
        process.start()
        processes.append(process)
    client = aioredis.Redis.from_url(redis_url)

    async def usage(repetition: int, key: str) -> tuple[int, int]:
        state = RedisState(client, prefix=prefixes[repetition])
        return (await state.budget_usage((key,)))[key]

    try:
        await _drive(usage, barrier, results, processes)
    finally:
        barrier.abort()  # a failed check must not leave the processes waiting
        await client.aclose()
    for process in processes:
        process.join(WAIT_S)
        assert process.exitcode == 0


async def test_four_threads_sharing_one_memory_state_never_settle_more_than_the_budget() -> None:
    states = [MemoryState(SystemClock()) for _ in range(REPETITIONS)]
    barrier = threading.Barrier(WORKERS + 1)
    results: queue.Queue[Any] = queue.Queue()
    threads = [
        threading.Thread(target=_thread, args=(states, barrier, results), daemon=True)
        for _ in range(WORKERS)
    ]
    for thread in threads:
        thread.start()

    async def usage(repetition: int, key: str) -> tuple[int, int]:
        return (await states[repetition].budget_usage((key,)))[key]

    try:
        await _drive(usage, barrier, results, threads)
    finally:
        barrier.abort()  # a failed check must not leave the threads waiting
    for thread in threads:
        thread.join(WAIT_S)
        assert not thread.is_alive()


# --- 1,000 executions, 20% cancelled or timed out ---

EXECUTIONS = 1_000
BATCH = 100  # redis-py 8 async pools refuse a 101st concurrent connection
# The agent's deadline is generous, so that a loaded machine never turns a slow admission into
# a test failure; a "slow" call gives up on its own after SLOW_S, as a provider timeout does.
TIMEOUT_S = 5.0
SLOW_S = 0.25
GLOBAL = BudgetRule(id=1, scope="global", target="*", window="daily", limit_usd=Decimal("1000"))
# The timeouts and failed attempts must not open a breaker: every execution must reach the call.
NEVER_OPENS = BreakerConfig(failure_threshold=1_000_000, minimum_calls=1_000_000)
PER_AGENT = BudgetRule(
    id=2, scope="agent", target="support", window="daily", limit_usd=Decimal("500")
)


@dataclass
class MixedProvider:
    """What a call does is in its prompt: ``ok``, ``hang`` (streams a little, then waits to be
    cancelled), ``slow`` (answers nothing, then times out; the cut stream still costs),
    ``flaky`` (a failed first attempt that cost tokens, then an answer)."""

    rng: random.Random
    entered: dict[str, asyncio.Event] = field(default_factory=dict)
    failed_once: set[str] = field(default_factory=set)

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        prompt = request.messages[-1].content
        kind = prompt.split(":")[0]
        used = estimate_messages(request.messages)
        if kind == "hang":
            if on_token is not None:
                for word in ("partial", "answer", "so", "far"):
                    await on_token(word + " ")
            self.entered[prompt].set()
            await asyncio.Event().wait()  # until cancelled
        if kind == "slow":
            await asyncio.sleep(min(timeout_s, SLOW_S))
            raise Timeout("no answer in time", input_tokens=used, output_tokens=7)
        if kind == "flaky" and prompt not in self.failed_once:
            self.failed_once.add(prompt)
            raise ProviderError("stream cut", input_tokens=used, output_tokens=3)
        return ChatResponse("done", (), Usage(used, self.rng.randint(1, 300)), "stop")


def _kind(n: int) -> str:
    return {0: "hang", 1: "slow", 2: "flaky"}.get(n % 10, "ok")


async def _a_thousand(state: StateStore) -> tuple[ListRecords, dict[str, tuple[int, int]]]:
    # Prices with fractions of a micro-USD per token, so that rounding up matters.
    priced = _deployment(input_price=Decimal("0.15"), output_price=Decimal("0.6"))
    agent = AgentConfig(
        name="support",
        model="primary",
        timeout_s=TIMEOUT_S,
        max_tokens=300,
        max_retries=2,
        breaker=NEVER_OPENS,
    )
    config = StaticConfig({"support": agent}, {"primary": (priced,)}, rules=(GLOBAL, PER_AGENT))
    provider = MixedProvider(random.Random(11))
    records = ListRecords()
    executor = Executor(
        config=config,
        state=state,
        providers=provider,
        clock=SystemClock(),
        records=records,
        retry=RetryPolicy(base_s=0.001, cap_s=0.01, min_attempt_s=0.01),
        deployment_breaker=NEVER_OPENS,
        rng=random.Random(5),
    )

    async def sink(text: str) -> None:
        return None

    for first in range(0, EXECUTIONS, BATCH):
        tasks: dict[str, asyncio.Task[ExecutionResult]] = {}
        for n in range(first, first + BATCH):
            prompt = f"{_kind(n)}:{n}" + " words" * (n % 7)
            if _kind(n) == "hang":
                provider.entered[prompt] = asyncio.Event()
            tasks[prompt] = asyncio.create_task(executor.execute(_request(prompt), on_token=sink))
        for prompt, entered in provider.entered.items():
            if prompt in tasks:
                task = tasks[prompt]
                waiter = asyncio.ensure_future(entered.wait())
                await asyncio.wait({waiter, task}, timeout=WAIT_S, return_when="FIRST_COMPLETED")
                waiter.cancel()
                got = task.result() if task.done() else task
                assert entered.is_set(), f"{prompt} never reached the provider: {got}"
                task.cancel()  # mid-call, with part of the answer streamed
        for task in tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, WAIT_S)
    keys = tuple(hold.key for hold in holds_for((GLOBAL, PER_AGENT), time.time(), 0))
    return records, await state.budget_usage(keys)


def _check_the_ledger(records: ListRecords, usage: dict[str, tuple[int, int]]) -> None:
    results = records.results
    assert len(results) == EXECUTIONS
    assert len({r.execution_id for r in results}) == EXECUTIONS
    by_status = {s: [r for r in results if r.status == s] for s in ExecutionStatus}
    assert len(by_status[ExecutionStatus.CANCELLED]) == EXECUTIONS // 10
    timed_out = [r for r in by_status[ExecutionStatus.DEGRADED] if r.fallback_reason == "timeout"]
    assert len(timed_out) >= EXECUTIONS // 10
    # the interrupted ones cost something, so their settlements are not trivially zero
    assert all(r.cost_usd > 0 for r in by_status[ExecutionStatus.CANCELLED] + timed_out)
    assert any(r.attempts == 2 for r in by_status[ExecutionStatus.SUCCEEDED])  # top-ups
    ledger = sum(to_micros(r.cost_usd, up=True) for r in results)
    assert ledger > 0
    assert sorted(usage.values()) == [(ledger, 0), (ledger, 0)]


async def test_memory_counters_equal_the_ledger_after_1000_executions_a_fifth_interrupted() -> None:
    _check_the_ledger(*await _a_thousand(MemoryState(SystemClock())))


async def test_redis_counters_equal_the_ledger_after_1000_executions_a_fifth_interrupted(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"bwtest:{uuid.uuid4().hex}"
    try:
        _check_the_ledger(*await _a_thousand(RedisState(client, prefix=prefix)))
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
