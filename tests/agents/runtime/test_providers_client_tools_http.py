"""Client tools on the wire: ``tool_choice``, ``strict`` and multi-call turns, in both formats,
through the production provider clients to fakellm (which honours ``tool_choice`` as the real
APIs do)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.types import ChatRequest, Message, ToolCall, ToolChoice, ToolSpec
from tests.agents.runtime.fakellm_fixture import (
    KINDS,
    UPSTREAM_MODEL,
    Kind,
    Upstream,
    provider_router,
    upstreams,
)

WEATHER = ToolSpec(
    name="get_weather",
    kind="client",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)
TIME = ToolSpec(
    name="get_time",
    kind="client",
    description="",
    parameters={"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}},
    strict=True,
)
ASKED = (Message("user", "Weather and time in Paris?"),)

pytestmark = pytest.mark.parametrize("kind", KINDS)


@pytest.fixture
async def fakellm() -> AsyncIterator[Upstream]:
    async with upstreams() as start:
        yield await start()


@pytest.fixture
async def router() -> AsyncIterator[ProviderRouter]:
    async with provider_router() as providers:
        yield providers


def request(kind: Kind, messages: tuple[Message, ...] = ASKED, **kw: Any) -> ChatRequest:
    return ChatRequest(UPSTREAM_MODEL[kind], messages, max_tokens=64, tools=(WEATHER, TIME), **kw)


async def last_body(fakellm: Upstream) -> dict[str, Any]:
    body: dict[str, Any] = (await fakellm.requests())[-1]["body"]
    return body


WIRE_CHOICE: dict[Kind, list[tuple[ToolChoice, Any]]] = {
    "openai": [
        (ToolChoice("auto"), "auto"),
        (ToolChoice("none"), "none"),
        (ToolChoice("required"), "required"),
        (
            ToolChoice("function", "get_time"),
            {"type": "function", "function": {"name": "get_time"}},
        ),
    ],
    "anthropic": [
        (ToolChoice("auto"), {"type": "auto"}),
        (ToolChoice("none"), {"type": "none"}),
        (ToolChoice("required"), {"type": "any"}),
        (ToolChoice("function", "get_time"), {"type": "tool", "name": "get_time"}),
    ],
}


async def test_tool_choice_is_sent_in_the_providers_own_words(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    deployment = fakellm.deployment(1, "m", kind=kind)
    for choice, wire in WIRE_CHOICE[kind]:
        await router.chat(deployment, request(kind, tool_choice=choice), timeout_s=5)
        assert (await last_body(fakellm))["tool_choice"] == wire

    await router.chat(deployment, request(kind), timeout_s=5)
    assert "tool_choice" not in await last_body(fakellm)  # None: the provider's default


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_forced_function_is_the_tool_called(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter
) -> None:
    tokens: list[str] = []

    async def on_token(text: str) -> None:
        tokens.append(text)

    response = await router.chat(
        fakellm.deployment(1, "m", kind=kind),
        request(kind, tool_choice=ToolChoice("function", "get_time")),
        timeout_s=5,
        on_token=on_token if stream else None,
    )

    [call] = response.tool_calls
    assert call.name == "get_time"  # not the first tool declared
    assert json.loads(call.arguments) == {"zone": "UTC"}
    assert response.finish_reason == "tool_calls"
    assert tokens == []


async def test_none_gets_text_even_from_an_upstream_set_to_call_tools(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(tool_call=True, output_tokens=3)
    deployment = fakellm.deployment(1, "m", kind=kind)

    called = await router.chat(deployment, request(kind), timeout_s=5)
    refrained = await router.chat(
        deployment, request(kind, tool_choice=ToolChoice("none")), timeout_s=5
    )

    assert [c.name for c in called.tool_calls] == ["get_weather"]
    assert refrained.tool_calls == ()
    assert refrained.content == "echo: Weather and"


async def test_strict_is_forwarded_where_the_format_has_it(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await router.chat(fakellm.deployment(1, "m", kind=kind), request(kind), timeout_s=5)

    tools = (await last_body(fakellm))["tools"]
    if kind == "openai":
        assert [t["function"].get("strict") for t in tools] == [None, True]
        assert tools[1]["function"]["parameters"] == dict(TIME.parameters)
    else:
        assert [t["name"] for t in tools] == ["get_weather", "get_time"]
        assert all("strict" not in t for t in tools)
        assert tools[0]["input_schema"] == dict(WEATHER.parameters)


async def test_a_turn_with_two_calls_sends_both_results_back(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    weather = ToolCall("call_a", "get_weather", '{"city": "Paris"}')
    time_ = ToolCall("call_b", "get_time", '{"zone": "CET"}')
    transcript = (
        *ASKED,
        Message("assistant", "Checking both.", tool_calls=(weather, time_)),
        Message("tool", "Sunny", tool_call_id="call_a", name="get_weather"),
        Message("tool", "14:00", tool_call_id="call_b", name="get_time"),
    )

    response = await router.chat(
        fakellm.deployment(1, "m", kind=kind), request(kind, transcript), timeout_s=5
    )

    assert response.content.startswith("result: ")
    messages = (await last_body(fakellm))["messages"]
    if kind == "openai":
        assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool"]
        assert [c["id"] for c in messages[1]["tool_calls"]] == ["call_a", "call_b"]
        assert [(m["tool_call_id"], m["content"]) for m in messages[2:]] == [
            ("call_a", "Sunny"),
            ("call_b", "14:00"),
        ]
    else:
        # Anthropic wants both results in the one user message after the tool_use blocks.
        assert [m["role"] for m in messages] == ["user", "assistant", "user"]
        assert messages[1]["content"] == [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "call_b", "name": "get_time", "input": {"zone": "CET"}},
        ]
        assert messages[2]["content"] == [
            {"type": "tool_result", "tool_use_id": "call_a", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "call_b", "content": "14:00"},
        ]
