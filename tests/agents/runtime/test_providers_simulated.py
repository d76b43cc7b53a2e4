"""The simulated provider with tools: a deterministic tool call, honouring tool_choice; text
after a tool result and for requests without tools."""

from __future__ import annotations

import json
from typing import Any

from agents.runtime.clock import FakeClock
from agents.runtime.providers.simulated import SimulatedProvider
from agents.runtime.types import (
    ChatRequest,
    ChatResponse,
    Deployment,
    Message,
    ProviderConfig,
    ToolCall,
    ToolChoice,
    ToolSpec,
)

DEPLOYMENT = Deployment(
    id=1,
    model="m",
    provider=ProviderConfig("sim", "simulated", "", None, {"latency_ms": 0, "seed": 1}),
    upstream_model="m-1",
    input_usd_per_mtok=None,
    output_usd_per_mtok=None,
    max_concurrency=10,
    weight=1,
)
WEATHER = ToolSpec(
    name="get_weather",
    kind="client",
    description="",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
)
TIME = ToolSpec("get_time", "client", "", {"type": "object", "properties": {}})
ASKED = (Message("user", "Weather in Paris?"),)


async def chat(messages: tuple[Message, ...] = ASKED, **kw: Any) -> ChatResponse:
    provider = SimulatedProvider(FakeClock())
    return await provider.chat(
        DEPLOYMENT, ChatRequest("m-1", messages, max_tokens=64, **kw), timeout_s=5
    )


async def test_with_tools_it_calls_the_first_with_sample_arguments_the_same_every_time() -> None:
    first = await chat(tools=(WEATHER, TIME))
    again = await chat(tools=(WEATHER, TIME))

    [call] = first.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Weather in Paris?", "days": 1}
    assert call.id.startswith("call_sim")
    assert first.finish_reason == "tool_calls"
    assert first.content == ""
    assert again == first


async def test_tool_choice_picks_the_tool_or_forbids_any() -> None:
    forced = await chat(tools=(WEATHER, TIME), tool_choice=ToolChoice("function", "get_time"))
    required = await chat(tools=(WEATHER, TIME), tool_choice=ToolChoice("required"))
    refrained = await chat(tools=(WEATHER, TIME), tool_choice=ToolChoice("none"))

    assert [c.name for c in forced.tool_calls] == ["get_time"]
    assert [c.name for c in required.tool_calls] == ["get_weather"]
    assert refrained.tool_calls == ()
    assert "Weather in Paris?" in refrained.content


async def test_after_a_tool_result_it_answers_with_text() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Paris", "days": 1}')
    transcript = (
        *ASKED,
        Message("assistant", "", tool_calls=(call,)),
        Message("tool", "Sunny", tool_call_id="call_1", name="get_weather"),
    )

    answer = await chat(transcript, tools=(WEATHER,))

    assert answer.tool_calls == ()
    assert answer.finish_reason == "stop"
    assert answer.content


async def test_without_tools_the_seeded_answer_is_what_it_always_was() -> None:
    answer = await chat()

    assert answer.tool_calls == ()
    # Pinned: the seed-1 answer before tool support, so demos and drills replay unchanged.
    assert answer.content == (
        "Thanks for reaching out. Here is what I found: Weather in Paris?. "
        "Let me know if you need anything else."
    )
    assert answer.finish_reason == "stop"
