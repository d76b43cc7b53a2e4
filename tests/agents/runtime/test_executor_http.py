"""The executor end to end over real HTTP: production providers, fakellm upstreams, real time.

Shared state is :class:`MemoryState` (embedded mode) and, for the breaker and Retry-After tests,
:class:`RedisState` on a unique key prefix (distributed mode, time from Redis ``TIME``).
Timed assertions are the acceptance criteria themselves (deadlines, Retry-After); every latency
is kept small so the file runs in seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.runtime.budgets import price
from agents.runtime.clock import SystemClock
from agents.runtime.executor import DEFAULT_DEPLOYMENT_BREAKER, Executor
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from agents.runtime.memory import MemoryState
from agents.runtime.ports import ListRecords, NullEvents
from agents.runtime.providers.base import estimate_messages, estimate_tokens
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.redis_state import RedisState
from agents.runtime.state import (
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    StateStore,
    Transition,
    agent_breaker_key,
    deployment_breaker_key,
)
from agents.runtime.types import (
    AgentConfig,
    Deployment,
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    Usage,
)
from tests.agents.runtime.fakellm_fixture import (
    KINDS,
    Kind,
    StartUpstream,
    Upstream,
    fake_input_tokens,
    provider_router,
    seed_for_streams,
    upstreams,
)
from tests.agents.runtime.support import StaticConfig

SYSTEM = "You are terse."
USER = "hello there"
MESSAGES = (Message("system", SYSTEM), Message("user", USER))
# The agent's own breaker must stay out of the way of the deployment breaker under test.
QUIET_AGENT_BREAKER = BreakerConfig(failure_threshold=1000, minimum_calls=1000)


@pytest.fixture
async def start_fakellm() -> AsyncIterator[StartUpstream]:
    async with upstreams() as start:
        yield start


@pytest.fixture
async def fakellm(start_fakellm: StartUpstream) -> Upstream:
    return await start_fakellm()


@pytest.fixture
async def router() -> AsyncIterator[ProviderRouter]:
    async with provider_router() as providers:
        yield providers


@pytest.fixture
def memory_state() -> MemoryState:
    return MemoryState(SystemClock())


@pytest.fixture(params=["memory", "redis"])
async def state(request: pytest.FixtureRequest) -> AsyncIterator[StateStore]:
    if request.param == "memory":
        yield MemoryState(SystemClock())
        return
    url: str = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    prefix = f"bwtest:http:{uuid.uuid4().hex}"
    try:
        yield RedisState(client, prefix=prefix)  # time from Redis TIME, as in production
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@dataclass
class Transitions(NullEvents):
    seen: list[Transition] = field(default_factory=list)

    def breaker_transition(self, transition: Transition) -> None:
        self.seen.append(transition)


@dataclass
class Rig:
    executor: Executor
    state: StateStore
    records: ListRecords
    events: Transitions
    config: StaticConfig
    make_executor: Callable[[], Executor]

    async def run(self, *, on_token: Any = None, text: str = USER) -> ExecutionResult:
        request = ExecutionRequest(
            agent="support", messages=(Message("user", text),), execution_id=str(uuid.uuid4())
        )
        return await self.executor.execute(request, on_token=on_token)

    async def breaker(
        self, key: str, config: BreakerConfig = DEFAULT_DEPLOYMENT_BREAKER
    ) -> BreakerSnapshot:
        return await self.state.breaker_snapshot(key, config)


def rig(
    state: StateStore,
    router: ProviderRouter,
    deployments: list[Deployment],
    **agent_fields: Any,
) -> Rig:
    fields: dict[str, Any] = {
        "name": "support",
        "model": "primary",
        "system_prompt": SYSTEM,
        "timeout_s": 5.0,
        "max_retries": 0,
        "breaker": QUIET_AGENT_BREAKER,
        **agent_fields,
    }
    agent = AgentConfig(**fields)
    by_model: dict[str, tuple[Deployment, ...]] = {}
    for deployment in deployments:
        by_model[deployment.model] = (*by_model.get(deployment.model, ()), deployment)
    config = StaticConfig({agent.name: agent}, by_model)
    records = ListRecords()
    events = Transitions()
    clock = SystemClock()

    def make_executor() -> Executor:
        return Executor(
            config=config,
            state=state,
            providers=router,
            clock=clock,
            records=records,
            events=events,
            rng=random.Random(7),
        )

    return Rig(make_executor(), state, records, events, config, make_executor)


class Tokens:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, text: str) -> None:
        self.items.append(text)

    @property
    def text(self) -> str:
        return "".join(self.items)


# --- 3a: the deployment breaker ---------------------------------------------------------------


async def test_all_503s_open_the_deployment_breaker_at_its_threshold_and_then_no_call_goes_out(
    state: StateStore, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=503)
    r = rig(state, router, [fakellm.deployment(1, "primary")])
    key = deployment_breaker_key(1)
    threshold = DEFAULT_DEPLOYMENT_BREAKER.failure_threshold
    assert threshold == 5

    for executed in range(1, threshold):
        result = await r.run()
        assert result.status == ExecutionStatus.DEGRADED
        assert result.fallback_reason == "llm_error"
        assert result.output == DEFAULT_FALLBACK_MESSAGES["unavailable"]
        assert result.attempts == 1
        snapshot = await r.breaker(key)
        assert snapshot.state == BreakerState.CLOSED
        assert snapshot.consecutive_failures == executed
    assert await fakellm.total() == threshold - 1
    assert r.events.seen == []

    await r.run()  # the threshold-th failure

    assert (await r.breaker(key)).state == BreakerState.OPEN
    assert [(t.key, t.to_state) for t in r.events.seen] == [(key, BreakerState.OPEN)]
    stats = await fakellm.stats()
    assert stats["total"] == threshold
    assert stats["endpoints"]["/v1/chat/completions"]["statuses"] == {"503": threshold}

    for _ in range(3):
        refused = await r.run()
        assert refused.status == ExecutionStatus.DEGRADED
        assert refused.fallback_reason == "circuit_open"
        assert refused.attempts == 0
        assert refused.usage == Usage()
    # Another worker sharing the state store learns it from there, not from its memory.
    other = r.make_executor()
    refused = await other.execute(
        ExecutionRequest("support", (Message("user", USER),), str(uuid.uuid4()))
    )
    assert refused.fallback_reason == "circuit_open"
    assert refused.attempts == 0
    assert await fakellm.total() == threshold


# --- 3b: Retry-After ------------------------------------------------------------------------


async def test_a_429_with_retry_after_delays_the_retry_by_at_least_that_long(
    state: StateStore, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=429, retry_after=2)
    r = rig(state, router, [fakellm.deployment(1, "primary")], max_retries=1)

    execution = asyncio.create_task(r.run())
    await fakellm.wait_for_requests(1)
    await fakellm.set_faults()  # the upstream recovers while the executor waits
    result = await execution

    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.attempts == 2
    assert result.fallback_used is False
    assert [s.outcome for s in result.steps] == ["RateLimited", "ok"]
    first, second = await fakellm.requests()
    assert (first["outcome"], first["status"]) == ("error", 429)
    assert (second["outcome"], second["status"]) == ("ok", 200)
    assert second["at"] - first["at"] >= 2.0
    # A rate limit is not the deployment's failure.
    assert (await r.breaker(deployment_breaker_key(1))).consecutive_failures == 0


# --- 3c: quota exhausted --------------------------------------------------------------------


async def test_exhausted_quota_is_not_retried_and_falls_back_exactly_once(
    start_fakellm: StartUpstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    broke = await start_fakellm(quota_exhausted=True)
    spare = await start_fakellm()
    primary = broke.deployment(1, "primary", kind="openai")
    backup = spare.deployment(2, "backup", kind="anthropic")
    r = rig(memory_state, router, [primary, backup], max_retries=3, fallback_models=("backup",))

    result = await r.run()

    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.model == "backup"
    assert result.deployment == 2
    assert result.fallback_used is True
    assert result.fallback_reason == "llm_error"
    assert result.attempts == 2
    assert result.output.startswith(f"echo: {USER}")
    assert [(s.kind, s.model, s.outcome) for s in result.steps] == [
        ("attempt", "primary", "QuotaExhausted"),
        ("fallback", "backup", "llm_error"),
        ("attempt", "backup", "ok"),
    ]
    usage = Usage(fake_input_tokens(MESSAGES), 16)
    assert result.usage == usage == Usage(8, 16)
    assert result.cost_usd == price(backup, usage)
    assert (await broke.stats())["endpoints"]["/v1/chat/completions"]["outcomes"] == {"quota": 1}
    assert (await spare.stats())["endpoints"]["/v1/messages"]["outcomes"] == {"ok": 1}
    # Out of credit is not an outage: the primary's breaker does not count it.
    assert (await r.breaker(deployment_breaker_key(1))).consecutive_failures == 0
    assert r.records.results == [result]


# --- 3d: hang -------------------------------------------------------------------------------


async def test_a_hang_is_cut_at_the_agent_deadline(
    fakellm: Upstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    await fakellm.set_faults(hang_rate=1)
    timeout_s = 1.0
    r = rig(
        memory_state,
        router,
        [fakellm.deployment(1, "primary")],
        timeout_s=timeout_s,
        max_retries=2,
    )

    started = time.monotonic()
    result = await r.run()
    elapsed = time.monotonic() - started

    assert timeout_s * 0.9 <= elapsed <= timeout_s * 1.1
    assert timeout_s * 900 <= result.latency_ms <= timeout_s * 1100
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "timeout"
    assert result.output == DEFAULT_FALLBACK_MESSAGES["timeout"]
    assert result.attempts == 1
    assert [s.outcome for s in result.steps] == ["Timeout"]
    assert (await fakellm.stats())["endpoints"]["/v1/chat/completions"]["outcomes"] == {"hang": 1}
    assert (await r.breaker(deployment_breaker_key(1))).consecutive_failures == 1


@pytest.mark.parametrize("attempt_timeout_s", [None, 0.5], ids=["derived", "explicit"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_hang_on_the_primary_leaves_the_fallback_time_to_answer_within_the_deadline(
    stream: bool,
    attempt_timeout_s: float | None,
    start_fakellm: StartUpstream,
    router: ProviderRouter,
    memory_state: MemoryState,
) -> None:
    hung = await start_fakellm(hang_rate=1)
    spare = await start_fakellm()
    timeout_s = 2.0
    r = rig(
        memory_state,
        router,
        [hung.deployment(1, "primary"), spare.deployment(2, "backup")],
        fallback_models=("backup",),
        timeout_s=timeout_s,
        attempt_timeout_s=attempt_timeout_s,
        max_retries=2,
    )
    tokens = Tokens()

    started = time.monotonic()
    result = await r.run(on_token=tokens if stream else None)
    elapsed = time.monotonic() - started

    assert result.status == ExecutionStatus.SUCCEEDED
    assert (result.model, result.fallback_used, result.fallback_reason) == (
        "backup",
        True,
        "timeout",
    )
    assert result.output.startswith("echo: hello there")
    if stream:
        assert tokens.text == result.output
    assert elapsed < timeout_s  # the chain answered within the agent's deadline
    # The backup kept its share (half the deadline, or one attempt_timeout_s) for itself.
    hung_for = timeout_s / 2 if attempt_timeout_s is None else attempt_timeout_s
    assert elapsed >= hung_for * 0.9
    hangs = [s for s in result.steps if s.kind == "attempt" and s.model == "primary"]
    assert {s.outcome for s in hangs} == {"Timeout"}
    assert all(s.latency_ms <= (timeout_s / 2) * 1000 * 1.1 for s in hangs)
    assert (await hung.stats())["endpoints"]["/v1/chat/completions"]["outcomes"] == {
        "hang": len(hangs)
    }


async def test_a_stream_that_has_started_is_not_cut_by_the_attempt_timeout(
    start_fakellm: StartUpstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    # 16 tokens 100 ms apart: about 1.6 s, longer than the primary's 1 s share of the deadline.
    slow = await start_fakellm(token_ms=100)
    spare = await start_fakellm()
    r = rig(
        memory_state,
        router,
        [slow.deployment(1, "primary"), spare.deployment(2, "backup")],
        fallback_models=("backup",),
        timeout_s=2.0,
        attempt_timeout_s=0.5,
    )
    tokens = Tokens()

    result = await r.run(on_token=tokens)

    assert result.status == ExecutionStatus.SUCCEEDED
    assert (result.model, result.fallback_used) == ("primary", False)
    assert len(tokens.items) == 16
    assert tokens.text == result.output
    assert result.latency_ms > 1000  # longer than the attempt timeout and than the share
    assert await spare.total() == 0


# --- 3e: cut stream -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_cut_stream_counts_for_the_breakers_and_its_tokens_are_paid_for(
    kind: Kind, fakellm: Upstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    await fakellm.set_faults(cut_stream_rate=1)
    deployment = fakellm.deployment(1, "primary", kind=kind)
    r = rig(memory_state, router, [deployment])
    tokens = Tokens()

    result = await r.run(on_token=tokens)

    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "llm_error"
    assert result.attempts == 1
    assert len(tokens.items) == 8  # half of fakellm's 16 deltas
    # Anthropic said the input size in message_start; OpenAI's usage never arrived (estimated).
    expected_input = (
        fake_input_tokens(MESSAGES) if kind == "anthropic" else estimate_messages(MESSAGES)
    )
    usage = Usage(expected_input, estimate_tokens(tokens.text))
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0
    assert result.usage == usage
    assert result.cost_usd == price(deployment, usage)
    [step] = result.steps
    assert (step.outcome, step.input_tokens, step.output_tokens) == (
        "ProviderError",
        usage.input_tokens,
        usage.output_tokens,
    )
    assert (await r.breaker(deployment_breaker_key(1))).consecutive_failures == 1
    agent_breaker = await r.breaker(agent_breaker_key("support"), QUIET_AGENT_BREAKER)
    assert agent_breaker.consecutive_failures == 1


async def test_what_the_caller_was_streamed_is_the_answer_it_gets(
    start_fakellm: StartUpstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    seed = seed_for_streams(["cut", "ok"], cut_stream_rate=0.5)
    fakellm = await start_fakellm(cut_stream_rate=0.5, seed=seed)
    r = rig(memory_state, router, [fakellm.deployment(1, "primary")], max_retries=1)
    tokens = Tokens()

    result = await r.run(on_token=tokens)

    if result.status == ExecutionStatus.SUCCEEDED:
        assert tokens.text == result.output
    else:
        assert await fakellm.total() == 1


# --- malformed replies ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_reply_whose_text_cannot_be_decoded_is_charged_its_usage_and_no_breaker_counts_it(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    await fakellm.set_faults(malformed_rate=1, malformed_mode="invalid_utf8")
    deployment = fakellm.deployment(1, "primary", kind=kind)
    r = rig(memory_state, router, [deployment])
    usage = Usage(fake_input_tokens(MESSAGES), 16)  # what fakellm reported (and billed)
    threshold = DEFAULT_DEPLOYMENT_BREAKER.failure_threshold

    for _ in range(threshold + 1):
        result = await r.run(on_token=Tokens() if stream else None)
        assert result.status == ExecutionStatus.DEGRADED
        assert result.fallback_reason == "llm_error"
        assert result.usage == usage
        assert result.cost_usd == price(deployment, usage) > 0
        [step] = result.steps
        assert (step.outcome, step.input_tokens, step.output_tokens) == (
            "MalformedReply",
            usage.input_tokens,
            usage.output_tokens,
        )
    # The upstream answered every time: broken text is not an outage, no breaker opened.
    assert (await r.breaker(deployment_breaker_key(1))).state == BreakerState.CLOSED
    assert (await r.breaker(deployment_breaker_key(1))).consecutive_failures == 0
    agent_breaker = await r.breaker(agent_breaker_key("support"), QUIET_AGENT_BREAKER)
    assert agent_breaker.consecutive_failures == 0
    assert r.events.seen == []


async def test_a_reply_with_broken_text_falls_back_to_the_next_model(
    start_fakellm: StartUpstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    broken = await start_fakellm(malformed_rate=1, malformed_mode="invalid_utf8")
    spare = await start_fakellm()
    primary = broken.deployment(1, "primary")
    r = rig(
        memory_state, router, [primary, spare.deployment(2, "backup")], fallback_models=("backup",)
    )

    result = await r.run()

    assert result.status == ExecutionStatus.SUCCEEDED
    assert (result.model, result.fallback_used, result.fallback_reason) == (
        "backup",
        True,
        "llm_error",
    )
    broken_usage = Usage(fake_input_tokens(MESSAGES), 16)
    assert result.steps[0].outcome == "MalformedReply"
    assert result.usage == broken_usage + Usage(fake_input_tokens(MESSAGES), 16)
    assert result.cost_usd == price(primary, broken_usage) + price(
        spare.deployment(2, "backup"), Usage(fake_input_tokens(MESSAGES), 16)
    )


# --- 3f: Retry-After beyond the deadline ----------------------------------------------------


async def test_a_retry_after_longer_than_the_time_left_degrades_at_once_without_a_retry(
    fakellm: Upstream, router: ProviderRouter, memory_state: MemoryState
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=429, retry_after=5)
    r = rig(memory_state, router, [fakellm.deployment(1, "primary")], timeout_s=2.0, max_retries=3)

    started = time.monotonic()
    result = await r.run()
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "rate_limited"
    assert result.output == DEFAULT_FALLBACK_MESSAGES["rate_limit"]
    assert result.attempts == 1
    assert result.retry_after == 5.0
    assert await fakellm.total() == 1
