"""Client tools (OpenAI ``tools`` on a request): they go to the provider next to the agent's
own tools, and a call to one ends the execution with the calls for the caller to run."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from agents.runtime.cache import MemoryCache
from agents.runtime.executor import Executor
from agents.runtime.providers.base import OnToken
from agents.runtime.tools import ToolRunner
from agents.runtime.types import (
    ChatRequest,
    ChatResponse,
    Deployment,
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)
from tests.agents.runtime.support import Harness, ScriptedProvider, agent, harness

WEATHER = ToolSpec(
    name="get_weather",
    kind="client",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
CLOCK = ToolSpec(
    name="current_time",
    kind="python",
    description="UTC time",
    parameters={"type": "object", "properties": {}},
    function="agents.tools_builtin:current_time",
)


@dataclass
class RecordingProvider(ScriptedProvider):
    """The scripted provider, keeping every request it was sent."""

    requests: list[ChatRequest] = field(default_factory=list)

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        self.requests.append(request)
        return await super().chat(deployment, request, timeout_s=timeout_s, on_token=on_token)


def recording(h: Harness) -> RecordingProvider:
    provider = RecordingProvider(h.clock)
    h.executor._attempts.providers = provider
    h.provider = provider
    return provider


def calls(*names: str) -> ChatResponse:
    """A turn calling these tools (the agent's clock takes no arguments, the others a city)."""
    return ChatResponse(
        "",
        tuple(
            ToolCall(f"call_{i}", name, "{}" if name == "current_time" else '{"city": "Paris"}')
            for i, name in enumerate(names)
        ),
        Usage(20, 8),
        "tool_calls",
    )


async def run(
    h: Harness,
    *,
    messages: tuple[Message, ...] = (Message("user", "Weather in Paris?"),),
    tools: tuple[ToolSpec, ...] = (WEATHER,),
    tool_choice: ToolChoice | None = None,
    **kwargs: Any,
) -> ExecutionResult:
    request = ExecutionRequest(
        agent="support",
        messages=messages,
        execution_id=str(uuid.uuid4()),
        tools=tools,
        tool_choice=tool_choice,
    )
    return await h.executor.execute(request, **kwargs)


def with_clock_tool(h: Harness) -> None:
    h.executor._attempts.tools = ToolRunner(
        python_allow_list=frozenset({"agents.tools_builtin:current_time"}), clock=h.clock
    )


async def test_a_call_to_a_client_tool_ends_the_execution_with_the_calls() -> None:
    h = harness([agent(fallback_models=())])
    provider = recording(h)
    provider.scripts["primary"] = [calls("get_weather")]

    result = await run(h)

    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.finish_reason == "tool_calls"
    assert result.tool_calls == (ToolCall("call_0", "get_weather", '{"city": "Paris"}'),)
    assert result.output == ""
    assert len(provider.requests) == 1  # nothing ran server-side, no second call
    assert [(s.kind, s.outcome, s.detail) for s in result.steps] == [
        ("attempt", "ok", ""),
        ("tool", "client", "get_weather"),
    ]
    # Paid for like any call: 20 input tokens at $1/Mtok + 8 output tokens at $2/Mtok.
    assert result.usage == Usage(20, 8)
    assert result.cost_usd * 1_000_000 == 36
    assert h.state.counts == {"admit": 1, "complete": 1}
    assert h.records.results == [result]


async def test_the_client_tools_and_tool_choice_reach_the_provider_after_the_agents_own() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    provider = recording(h)
    choice = ToolChoice("function", "get_weather")
    provider.scripts["primary"] = [calls("get_weather")]

    await run(h, tool_choice=choice)

    [sent] = provider.requests
    assert sent.tools == (CLOCK, WEATHER)
    assert sent.tool_choice == choice


async def test_a_request_without_client_tools_sends_the_agents_tools_and_no_tool_choice() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    provider = recording(h)

    result = await run(h, tools=())

    assert result.output == "ok"
    assert result.tool_calls == ()
    [sent] = provider.requests
    assert sent.tools == (CLOCK,)
    assert sent.tool_choice is None


async def test_agent_tools_still_run_server_side_before_a_client_call_ends_the_execution() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    with_clock_tool(h)
    provider = recording(h)
    provider.scripts["primary"] = [calls("current_time"), calls("get_weather")]

    result = await run(h, tool_choice=ToolChoice("required"))

    assert result.finish_reason == "tool_calls"
    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert [(s.kind, s.outcome) for s in result.steps] == [
        ("attempt", "ok"),
        ("tool", "ok"),
        ("attempt", "ok"),
        ("tool", "client"),
    ]
    first, second = provider.requests
    assert first.tool_choice == ToolChoice("required")
    # Forcing again after a server-side round would loop to the step cap: the model decides.
    assert second.tool_choice is None
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    assert result.usage == Usage(40, 16)  # both calls charged


async def test_none_stays_in_force_after_a_server_side_round() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    with_clock_tool(h)
    provider = recording(h)
    provider.scripts["primary"] = [calls("current_time"), "It is noon."]

    result = await run(h, tool_choice=ToolChoice("none"))

    assert result.output == "It is noon."
    assert [r.tool_choice for r in provider.requests] == [ToolChoice("none")] * 2


async def test_a_turn_mixing_agent_and_client_calls_hands_back_only_the_client_calls() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    with_clock_tool(h)
    provider = recording(h)
    provider.scripts["primary"] = [calls("current_time", "get_weather")]

    result = await run(h)

    assert [c.name for c in result.tool_calls] == ["get_weather"]
    assert [(s.kind, s.outcome, s.detail) for s in result.steps][1:] == [
        ("tool", "client", "get_weather (agent calls dropped: 1)")
    ]
    assert len(provider.requests) == 1


async def test_an_unknown_tool_name_goes_back_to_the_caller_when_it_offered_tools() -> None:
    h = harness([agent(tools=(CLOCK,), fallback_models=())])
    provider = recording(h)
    provider.scripts["primary"] = [calls("made_up")]

    result = await run(h)

    assert result.status == ExecutionStatus.SUCCEEDED
    assert [c.name for c in result.tool_calls] == ["made_up"]


async def test_the_follow_up_turn_sends_the_results_and_answers_with_text() -> None:
    h = harness([agent(fallback_models=())])
    provider = recording(h)
    provider.scripts["primary"] = ["Sunny in Paris."]
    call = ToolCall("call_0", "get_weather", '{"city": "Paris"}')
    transcript = (
        Message("user", "Weather in Paris?"),
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "Sunny, 21 C", tool_call_id="call_0", name="get_weather"),
    )

    result = await run(h, messages=transcript)

    assert result.output == "Sunny in Paris."
    assert result.finish_reason == "stop"
    assert result.tool_calls == ()
    assert provider.requests[0].messages == transcript


async def test_a_streamed_client_call_sends_no_tokens() -> None:
    h = harness([agent(fallback_models=())])
    provider = recording(h)
    provider.scripts["primary"] = [calls("get_weather")]
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    result = await run(h, on_token=on_token)

    assert result.finish_reason == "tool_calls"
    assert tokens == []


async def test_requests_with_client_tools_neither_read_nor_fill_the_response_cache() -> None:
    h = harness([agent(fallback_models=(), cache_ttl_s=60)])
    cache = MemoryCache(clock=h.clock)
    executor = Executor(
        config=h.config,
        state=h.state,
        providers=h.provider,
        clock=h.clock,
        records=h.records,
        cache=cache,
        rng=random.Random(7),
    )
    h.executor = executor
    h.provider.scripts["primary"] = ["first", "second", "third"]

    outputs = []
    for tools in ((WEATHER,), (), (), (WEATHER,)):
        result = await run(h, tools=tools)
        await executor.drain_cache_writes()
        outputs.append((result.output, result.cached))

    assert outputs == [
        ("first", False),  # with tools: not stored...
        ("second", False),  # ...so the same prompt without tools misses
        ("second", True),  # the cache works for plain requests
        ("third", False),  # with tools: not read
    ]
