from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from agents.runtime.errors import Capacity, ClientError, QuotaExhausted, RateLimited
from agents.runtime.executor import DEFAULT_DEPLOYMENT_BREAKER, RetryPolicy, UnknownAgent
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from agents.runtime.state import RateLimit
from agents.runtime.types import AgentConfig, ChatResponse, ExecutionStatus, RateLimits
from tests.agents.runtime.support import agent, deployment, harness


async def test_a_successful_execution_costs_one_round_trip_before_and_one_after() -> None:
    h = harness()
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.output == "ok"
    assert result.model == "primary"
    assert result.deployment == 1
    assert h.state.counts == {"admit": 1, "complete": 1}
    assert h.records.results == [result]


async def test_it_prices_usage_with_the_deployment_that_answered() -> None:
    h = harness()
    result = await h.run()
    # 10 input tokens at $1/Mtok + 5 output tokens at $2/Mtok
    assert result.cost_usd == Decimal(10 + 10) / Decimal(1_000_000)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (10, 5)


async def test_it_retries_capacity_errors_with_jittered_backoff_then_succeeds() -> None:
    h = harness()
    h.provider.scripts["primary"] = [Capacity("503", status=503), Capacity("503", status=503)]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.attempts == 3
    assert result.fallback_used is False
    assert len(h.clock.sleeps) == 2
    assert 0 <= h.clock.sleeps[0] <= 0.25
    assert 0 <= h.clock.sleeps[1] <= 0.5


async def test_it_waits_the_retry_after_the_provider_asked_for() -> None:
    h = harness()
    h.provider.scripts["primary"] = [RateLimited("429", status=429, retry_after=2.0)]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert h.clock.sleeps == [2.0]


async def test_the_retried_attempt_records_the_wait_that_followed_it() -> None:
    h = harness()
    h.provider.scripts["primary"] = [RateLimited("429", status=429, retry_after=2.0)]
    result = await h.run()
    failed, answered = result.steps
    assert (failed.outcome, failed.wait_ms) == ("RateLimited", 2000.0)
    assert failed.as_dict()["wait_ms"] == 2000.0
    assert (answered.outcome, answered.wait_ms) == ("ok", 0.0)
    assert "wait_ms" not in answered.as_dict()  # only a retried attempt carries it


async def test_exhausted_quota_is_not_retried_and_falls_back_once() -> None:
    h = harness()
    h.provider.scripts["primary"] = [QuotaExhausted("insufficient_quota", status=429)]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert [call[0] for call in h.provider.calls] == ["primary", "backup"]
    assert result.model == "backup"
    assert result.fallback_used is True
    assert result.fallback_reason == "llm_error"
    assert h.clock.sleeps == []


async def test_spent_retries_move_to_the_fallback_model() -> None:
    h = harness()
    h.provider.scripts["primary"] = [Capacity("503")] * 3
    result = await h.run()
    assert [call[0] for call in h.provider.calls] == ["primary"] * 3 + ["backup"]
    assert result.model == "backup"
    assert result.attempts == 4


async def test_when_every_model_fails_the_user_gets_the_agents_fallback_message() -> None:
    custom = agent(fallback_messages={"unavailable": "We are on it."})
    h = harness([custom])
    h.provider.scripts["primary"] = [Capacity("503")] * 3
    h.provider.scripts["backup"] = [Capacity("503")] * 3
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.output == "We are on it."
    assert result.fallback_reason == "llm_error"


async def test_a_client_error_fails_without_retry_or_fallback() -> None:
    h = harness()
    h.provider.scripts["primary"] = [ClientError("400 context too long", status=400)]
    result = await h.run()
    assert result.status == ExecutionStatus.FAILED
    assert len(h.provider.calls) == 1
    assert result.error == {"type": "client_error", "message": "400 context too long"}


async def test_the_deadline_bounds_retries_and_fallbacks_together() -> None:
    h = harness([agent(timeout_s=2.0, max_retries=5)])
    # Each attempt takes 0.9 s and fails: two fit in 2 s, a third cannot start.
    h.provider.scripts["primary"] = [0.9, Capacity("503"), 0.9, Capacity("503"), 0.9]
    h.provider.scripts["backup"] = [5.0]
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.latency_ms <= 2000 * 1.1
    for _, _, timeout_s in h.provider.calls:
        assert timeout_s <= 2.0


async def test_a_hang_is_cut_at_the_deadline() -> None:
    h = harness([agent(timeout_s=3.0, fallback_models=())])
    h.provider.scripts["primary"] = [60.0]
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "timeout"
    assert result.output == DEFAULT_FALLBACK_MESSAGES["timeout"]
    assert 2700 <= result.latency_ms <= 3300


# --- attempt timeouts: a hang leaves time for the fallback ----------------------------------


async def test_a_hang_on_the_primary_leaves_the_fallback_its_share_of_the_deadline() -> None:
    h = harness([agent(timeout_s=10.0, max_retries=2)])  # attempt_timeout_s unset
    h.provider.scripts["primary"] = [60.0]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert (result.model, result.fallback_reason) == ("backup", "timeout")
    # Two models: the primary may use half the deadline, and no retry eats the other half.
    assert h.provider.calls == [("primary", 1, 5.0), ("backup", 2, 5.0)]
    assert [(s.kind, s.outcome) for s in result.steps] == [
        ("attempt", "Timeout"),
        ("fallback", "timeout"),
        ("attempt", "ok"),
    ]
    assert result.latency_ms == 5000.0


async def test_attempt_timeout_s_bounds_each_attempt_and_retries_keep_the_fallbacks_share() -> None:
    no_backoff = RetryPolicy(base_s=0.0)
    h = harness([agent(timeout_s=10.0, attempt_timeout_s=3.0, max_retries=3)], retry=no_backoff)
    h.provider.scripts["primary"] = [60.0] * 4
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.model == "backup"
    # 3 s an attempt; 3 s (one attempt) kept for the backup: retries get 3 s, then the 1 s
    # left before the backup's share, and no third retry; the backup gets its 3 s.
    assert h.provider.calls == [
        ("primary", 1, 3.0),
        ("primary", 1, 3.0),
        ("primary", 1, 1.0),
        ("backup", 2, 3.0),
    ]
    assert result.latency_ms == 7000.0


async def test_each_later_model_keeps_an_equal_share_of_the_deadline() -> None:
    chain = agent(timeout_s=9.0, fallback_models=("backup", "spare"), max_retries=1)
    h = harness(
        [chain],
        [deployment(1, "primary"), deployment(2, "backup"), deployment(3, "spare")],
    )
    h.provider.scripts["primary"] = [60.0, 60.0]
    h.provider.scripts["backup"] = [60.0, 60.0]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.model == "spare"
    assert [(model, timeout) for model, _, timeout in h.provider.calls] == [
        ("primary", 3.0),
        ("backup", 3.0),
        ("spare", 3.0),
    ]
    assert result.latency_ms <= 9000.0


async def test_attempt_timeout_s_alone_bounds_the_attempts_of_a_single_model() -> None:
    no_backoff = RetryPolicy(base_s=0.0)
    h = harness(
        [agent(timeout_s=10.0, attempt_timeout_s=4.0, fallback_models=())], retry=no_backoff
    )
    h.provider.scripts["primary"] = [60.0, 60.0, "ok"]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.attempts == 3  # a hang leaves time for retries too
    assert [timeout for _, _, timeout in h.provider.calls] == [4.0, 4.0, 2.0]


async def test_without_fallbacks_or_attempt_timeout_an_attempt_may_use_the_whole_deadline() -> None:
    h = harness([agent(timeout_s=3.0, fallback_models=())])
    h.provider.scripts["primary"] = [60.0]
    await h.run()
    assert h.provider.calls == [("primary", 1, 3.0)]


async def test_no_time_left_for_the_primary_moves_on_and_counts_for_no_breaker() -> None:
    from agents.runtime.tools import ToolRunner
    from agents.runtime.types import ToolSpec

    clock_tool = ToolSpec(
        name="current_time",
        kind="python",
        description="UTC time",
        parameters={"type": "object", "properties": {}},
        function="agents.tools_builtin:current_time",
    )
    h = harness([agent(timeout_s=10.0, tools=(clock_tool,))])
    h.executor._attempts.tools = ToolRunner(
        python_allow_list=frozenset({"agents.tools_builtin:current_time"}), clock=h.clock
    )
    # The primary's tool call takes all but 0.01 s of its 5 s: no time for its next call.
    h.provider.scripts["primary"] = [4.99, _tool_call_response()]
    h.provider.scripts["backup"] = ["It is noon."]
    result = await h.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert (result.model, result.output, result.fallback_reason) == (
        "backup",
        "It is noon.",
        "timeout",
    )
    assert [(s.kind, s.outcome) for s in result.steps] == [
        ("attempt", "ok"),
        ("tool", "ok"),
        ("attempt", "DeadlineReached"),
        ("fallback", "timeout"),
        ("attempt", "ok"),
    ]
    assert [c[0] for c in h.provider.calls] == ["primary", "backup"]  # nothing sent meanwhile
    snap = await h.state.inner.breaker_snapshot("deployment:1", DEFAULT_DEPLOYMENT_BREAKER)
    assert snap.consecutive_failures == 0


async def test_the_deployment_breaker_opens_at_its_threshold_and_then_skips_the_model() -> None:
    h = harness([agent(max_retries=0)])
    h.provider.scripts["primary"] = [Capacity("503")] * 5
    for _ in range(5):
        await h.run()
    primary_calls = [c for c in h.provider.calls if c[0] == "primary"]
    assert len(primary_calls) == 5  # the deployment breaker threshold (5)
    before = len(h.provider.calls)
    result = await h.run()
    assert [c[0] for c in h.provider.calls[before:]] == ["backup"]
    assert result.fallback_reason == "circuit_open"


async def test_an_open_agent_breaker_rejects_without_a_round_trip() -> None:
    h = harness([agent(fallback_models=(), max_retries=0)])
    h.provider.scripts["primary"] = [Capacity("503")] * 3
    for _ in range(3):
        await h.run()
    admits = h.state.counts["admit"]
    calls = len(h.provider.calls)
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "circuit_open"
    assert h.state.counts["admit"] == admits
    assert len(h.provider.calls) == calls


async def test_rate_limited_executions_are_degraded_with_the_time_to_retry() -> None:
    h = harness([agent(rate_limits=RateLimits(rpm=2))])
    assert (await h.run()).status == ExecutionStatus.SUCCEEDED
    h.clock.advance(10)
    assert (await h.run()).status == ExecutionStatus.SUCCEEDED
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "rate_limited"
    assert result.retry_after == pytest.approx(50.0)
    assert len(h.provider.calls) == 2


async def test_tpm_reservations_are_settled_to_the_tokens_used() -> None:
    h = harness([agent(rate_limits=RateLimits(tpm=5000), max_tokens=1000)])
    await h.run()
    # Reserved ~1000+ tokens at admission, settled to the 15 used: plenty left.
    ok, _ = await h.state.inner.rate_acquire(
        (RateLimit("tpm:agent:support", 5000, 60.0, 4900),), "probe"
    )
    assert ok


async def test_streamed_tokens_reach_the_caller() -> None:
    h = harness()
    h.provider.scripts["primary"] = ["hello brave new world"]
    seen: list[str] = []

    async def on_token(text: str) -> None:
        seen.append(text)

    result = await h.run(on_token=on_token)
    assert seen == ["hello", "brave", "new", "world"]
    assert result.status == ExecutionStatus.SUCCEEDED


async def test_a_cancelled_execution_is_recorded_and_leaks_no_lease() -> None:
    h = harness()
    h.provider.scripts["primary"] = [asyncio.Event()]  # never answers

    async def slow_chat(*args: object, **kwargs: object) -> None:
        await asyncio.Event().wait()

    h.provider.chat = slow_chat  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(h.run())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.records.results[-1].status == ExecutionStatus.CANCELLED
    assert await h.state.inner.in_flight((1, 2)) == {1: 0, 2: 0}


async def test_an_unknown_agent_is_refused_before_anything_else() -> None:
    h = harness()
    with pytest.raises(UnknownAgent):
        await h.run(agent="nobody")
    assert h.state.counts == {}


async def test_least_loaded_deployment_is_chosen() -> None:
    h = harness(
        deployments=[deployment(1, "primary"), deployment(3, "primary"), deployment(2, "backup")]
    )
    gate = asyncio.Event()
    original = h.provider.chat

    async def held(*args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        await gate.wait()
        return await original(*args, **kwargs)  # type: ignore[arg-type]

    h.provider.chat = held  # type: ignore[method-assign]
    first = asyncio.create_task(h.run())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(h.run())
    await asyncio.sleep(0.01)
    assert await h.state.inner.in_flight((1, 3)) == {1: 1, 3: 1}
    gate.set()
    results = await asyncio.gather(first, second)
    assert {r.deployment for r in results} == {1, 3}


def _tool_agent(**overrides: Any) -> AgentConfig:
    from agents.runtime.types import ToolSpec

    clock_tool = ToolSpec(
        name="current_time",
        kind="python",
        description="UTC time",
        parameters={"type": "object", "properties": {}},
        function="agents.tools_builtin:current_time",
    )
    return agent(tools=(clock_tool,), fallback_models=(), **overrides)


def _tool_call_response() -> ChatResponse:
    from agents.runtime.types import ToolCall, Usage

    return ChatResponse("", (ToolCall("call_1", "current_time", "{}"),), Usage(20, 8), "tool_calls")


async def test_tool_calls_run_and_their_results_go_back_to_the_model() -> None:
    from agents.runtime.tools import ToolRunner

    h = harness([_tool_agent()])
    h.executor._attempts.tools = ToolRunner(
        python_allow_list=frozenset({"agents.tools_builtin:current_time"}), clock=h.clock
    )
    h.provider.scripts["primary"] = [_tool_call_response(), "It is noon."]
    result = await h.run("what time is it?")
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.output == "It is noon."
    assert [s.kind for s in result.steps] == ["attempt", "tool", "attempt"]
    assert result.usage.input_tokens == 30  # both provider steps are charged
    assert h.state.counts == {"admit": 1, "complete": 1}


async def test_a_tool_not_on_the_allow_list_degrades_with_the_tool_message() -> None:
    from agents.runtime.tools import ToolRunner

    h = harness([_tool_agent()])
    h.executor._attempts.tools = ToolRunner(python_allow_list=frozenset(), clock=h.clock)
    h.provider.scripts["primary"] = [_tool_call_response()]
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "tool_error"
    assert result.output == DEFAULT_FALLBACK_MESSAGES["tool_error"]


async def test_the_tool_loop_stops_at_the_step_cap() -> None:
    from agents.runtime.tools import ToolRunner

    h = harness([_tool_agent(max_tool_steps=2)])
    h.executor._attempts.tools = ToolRunner(
        python_allow_list=frozenset({"agents.tools_builtin:current_time"}), clock=h.clock
    )
    h.provider.scripts["primary"] = [_tool_call_response() for _ in range(5)]
    result = await h.run()
    assert result.status == ExecutionStatus.DEGRADED
    assert result.fallback_reason == "tool_error"
    assert len([s for s in result.steps if s.kind == "tool"]) == 2


def test_the_memory_window_keeps_the_latest_messages_within_both_limits() -> None:
    from agents.runtime.choice import window
    from agents.runtime.types import Message

    history = tuple(Message("user", f"message {i} " + "x" * 40) for i in range(10))
    assert window(history, max_messages=3, max_tokens=10_000) == history[-3:]
    # each message estimates to ~16 tokens: 40 tokens fit two of them
    assert window(history, max_messages=10, max_tokens=40) == history[-2:]
    assert window(history, max_messages=10, max_tokens=1) == ()


@pytest.mark.django_db(transaction=True)
async def test_a_session_remembers_earlier_turns() -> None:
    from agents.executions.sessions import LocalSessions

    h = harness()
    h.executor._sessions = LocalSessions()
    seen: list[int] = []
    original = h.provider.chat

    async def counting(deployment, request, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(request.messages))
        return await original(deployment, request, **kwargs)

    h.provider.chat = counting  # type: ignore[method-assign]
    import uuid

    from agents.runtime.types import ExecutionRequest, Message

    for text in ("first", "second"):
        await h.executor.execute(
            ExecutionRequest(
                agent="support",
                messages=(Message("user", text),),
                execution_id=str(uuid.uuid4()),
                session_id="s-1",
            )
        )
    assert seen == [1, 3]  # second call carries user, assistant, user


async def test_an_api_keys_own_rate_limit_applies_across_agents() -> None:
    import uuid

    from agents.runtime.types import ExecutionRequest, Message

    h = harness([agent("a"), agent("b")])

    async def run(name: str) -> ExecutionStatus:
        result = await h.executor.execute(
            ExecutionRequest(
                agent=name,
                messages=(Message("user", "hi"),),
                execution_id=str(uuid.uuid4()),
                api_key_id=7,
                api_key_limits=RateLimits(rpm=2),
            )
        )
        return result.status

    assert await run("a") == ExecutionStatus.SUCCEEDED
    assert await run("b") == ExecutionStatus.SUCCEEDED
    assert await run("a") == ExecutionStatus.DEGRADED


async def test_a_repeated_task_is_served_from_cache_for_nothing() -> None:
    from agents.runtime.cache import MemoryCache

    h = harness([agent(cache_ttl_s=60)])
    h.executor._cache = MemoryCache(clock=h.clock)
    first = await h.run("where is my order?")
    await h.executor.drain_cache_writes()
    calls = len(h.provider.calls)
    second = await h.run("where   is my order?")  # whitespace differences share an answer
    assert second.cached is True
    assert second.output == first.output
    assert second.cost_usd == 0
    assert second.saved_usd == first.cost_usd > 0
    assert len(h.provider.calls) == calls
    assert h.state.counts["admit"] == 1  # a hit needs no state round trip


async def test_degraded_answers_are_never_cached_and_no_cache_bypasses() -> None:
    import uuid

    from agents.runtime.cache import MemoryCache
    from agents.runtime.types import ExecutionRequest, Message

    h = harness([agent(cache_ttl_s=60, fallback_models=(), max_retries=0)])
    h.executor._cache = MemoryCache(clock=h.clock)
    h.provider.scripts["primary"] = [Capacity("503")]
    assert (await h.run("q")).status == ExecutionStatus.DEGRADED
    await h.executor.drain_cache_writes()
    assert (await h.run("q")).cached is False  # the failure was not cached
    await h.executor.drain_cache_writes()
    bypass = await h.executor.execute(
        ExecutionRequest(
            agent="support",
            messages=(Message("user", "q"),),
            execution_id=str(uuid.uuid4()),
            bypass_cache=True,
        )
    )
    assert bypass.cached is False
