"""Client tools on ``/v1/chat/completions``, driven by the official ``openai`` SDK against a live
server whose upstreams are fakellm (both wire formats) and the simulated provider."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from agents.devtools.fakellm import FakeLLMThread, FaultConfig
from tests.live import free_port, manage, serve, wait_http

DOC = """
providers:
  - {{name: fake-openai, kind: openai, base_url: "{fake}/v1"}}
  - {{name: fake-anthropic, kind: anthropic, base_url: "{fake}"}}
  - {{name: sim, kind: simulated, simulation: {{latency_ms: 0, error_rate: 0, seed: 1}}}}
models:
  - {{name: oa, provider: fake-openai, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: an, provider: fake-anthropic, upstream_model: claude-3-5-haiku-20241022,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: sm, provider: sim, upstream_model: s-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
agents:
  - {{name: gpt, model: oa, max_tokens: 64, system_prompt: "Be brief."}}
  - {{name: claude, model: an, max_tokens: 64, system_prompt: "Be brief."}}
  - {{name: sim, model: sm, max_tokens: 64}}
  - name: clocked
    model: oa
    max_tokens: 64
    tools: [{{name: current_time, kind: python, function: "agents.tools_builtin:current_time"}}]
"""

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}},
    },
}
ASK: Any = [{"role": "user", "content": "Weather in Paris?"}]


@dataclass
class Live:
    base_url: str
    key: str
    fakellm: str

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=self.key, max_retries=0)

    def upstream_requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.fakellm}/_admin/requests") as response:
            items: list[dict[str, Any]] = json.load(response)["items"]
        return items

    def upstream_total(self) -> int:
        with urllib.request.urlopen(f"{self.fakellm}/_admin/stats") as response:
            return int(json.load(response)["total"])


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """fakellm answering with tool calls whenever a request has tools and no tool result yet,
    and a live `manage.py serve` (embedded mode, its own SQLite) in front of it."""
    var = tmp_path_factory.mktemp("openai-tools")
    with FakeLLMThread(FaultConfig(tool_call=True, output_tokens=8)) as fake:
        manage(var, "migrate", "--noinput", "-v0")
        manage(var, "apply", "-f", "-", stdin=DOC.format(fake=fake.url))
        key = manage(var, "create_api_key", "--name", "sdk", "--scopes", "execute,read").strip()
        port = free_port()
        process = serve(var, port)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/healthz")
            yield Live(f"{base}/v1", key, fake.url)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)


@pytest.mark.parametrize("model", ["gpt", "claude", "sim"])
def test_a_tool_call_round_trip(live: Live, model: str) -> None:
    client = live.client()
    first = client.chat.completions.create(model=model, messages=ASK, tools=[WEATHER])

    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Weather in Paris?"}
    assert first.usage is not None
    assert first.usage.completion_tokens > 0
    assert (first.model_extra or {})["breakwater"]["cost_usd"] > 0  # paid for like any call

    follow_up: list[Any] = [
        *ASK,
        choice.message,  # the SDK's own message object, as its docs show
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = client.chat.completions.create(model=model, messages=follow_up, tools=[WEATHER])

    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.tool_calls is None
    answer = second.choices[0].message.content or ""
    if model == "sim":
        assert "Weather in Paris?" in answer
    else:
        assert answer.startswith("result: Sunny, 21 C")  # fakellm answers from the result


def test_the_upstream_gets_the_tools_and_the_tool_turns_in_its_own_format(live: Live) -> None:
    client = live.client()
    first = client.chat.completions.create(model="claude", messages=ASK, tools=[WEATHER])
    call = (first.choices[0].message.tool_calls or [])[0]
    follow_up: list[Any] = [
        *ASK,
        first.choices[0].message,
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny"},
    ]
    client.chat.completions.create(model="claude", messages=follow_up, tools=[WEATHER])

    body = live.upstream_requests()[-1]["body"]
    assert body["system"] == "Be brief."
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather in a city",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": "get_weather",
                    "input": {"city": "Weather in Paris?"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
        },
    ]


@pytest.mark.parametrize("model", ["gpt", "claude", "sim"])
def test_a_streamed_tool_call_is_reassembled_by_the_sdk(live: Live, model: str) -> None:
    with live.client().chat.completions.stream(
        model=model,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        stream_options={"include_usage": True},
    ) as stream:
        chunks = list(stream)
        final = stream.get_final_completion()

    [call] = final.choices[0].message.tool_calls or []
    assert call.function.name == "get_time"
    assert json.loads(call.function.arguments) == ({} if model == "sim" else {"zone": "UTC"})
    assert call.id
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None
    assert final.usage.completion_tokens > 0
    # The arguments came as delta.tool_calls chunks after one carrying the id and the name.
    deltas = [
        c.chunk.choices[0].delta.tool_calls
        for c in chunks
        if c.type == "chunk" and c.chunk.choices and c.chunk.choices[0].delta.tool_calls
    ]
    assert deltas[0]
    assert deltas[0][0].id == call.id
    assert deltas[0][0].function
    assert deltas[0][0].function.name == "get_time"


def test_long_arguments_stream_in_several_fragments(live: Live) -> None:
    question = "Book a trip from Paris to Lyon on Friday, back on Sunday"
    trip: Any = {
        "type": "function",
        "function": {
            "name": "book_trip",
            "parameters": {
                "type": "object",
                "properties": {name: {"type": "string"} for name in ("origin", "to", "note")},
            },
        },
    }
    stream = live.client().chat.completions.create(
        model="gpt",
        messages=[{"role": "user", "content": question}],
        tools=[trip],
        stream=True,
    )
    fragments = [
        piece.function.arguments
        for chunk in stream
        if chunk.choices
        for piece in chunk.choices[0].delta.tool_calls or ()
        if piece.function and piece.function.arguments
    ]

    assert len(fragments) > 1
    snippet = question[:40].strip()  # fakellm's example value for a string
    assert json.loads("".join(fragments)) == {"origin": snippet, "to": snippet, "note": snippet}


def test_tool_choice_reaches_the_upstream(live: Live) -> None:
    client = live.client()
    forced = client.chat.completions.create(
        model="gpt",
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = forced.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls if c.type == "function"] == ["get_time"]
    assert live.upstream_requests()[-1]["body"]["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_time"},
    }

    refrained = client.chat.completions.create(
        model="gpt", messages=ASK, tools=[WEATHER], tool_choice="none"
    )
    assert refrained.choices[0].finish_reason == "stop"
    assert (refrained.choices[0].message.content or "").startswith("echo: Weather in Paris?")
    assert live.upstream_requests()[-1]["body"]["tool_choice"] == "none"


def test_agent_tools_keep_running_server_side_next_to_client_tools(live: Live) -> None:
    completion = live.client().chat.completions.create(
        model="clocked", messages=ASK, tools=[WEATHER]
    )

    # fakellm calls the first tool offered, the agent's clock: it runs in Breakwater, and the
    # model answers from its result; the client never sees that call.
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.choices[0].message.content or "").startswith("result: ")
    first, second = live.upstream_requests()[-2:]
    assert [t["function"]["name"] for t in first["body"]["tools"]] == [
        "current_time",
        "get_weather",
    ]
    assert second["body"]["messages"][-1]["role"] == "tool"


def test_a_schema_using_the_whole_draft_goes_upstream_unchanged(live: Live) -> None:
    parameters: dict[str, Any] = {
        "type": "object",
        "$defs": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}},
        "properties": {
            "currency": {"$ref": "#/$defs/code"},
            "amount": {"type": "number", "minimum": 0},
            "target": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 1}]},
            "rounding": {"enum": ["up", "down", None]},
        },
        "required": ["currency"],
    }
    tool: Any = {"type": "function", "function": {"name": "pay", "parameters": parameters}}

    live.client().chat.completions.create(model="gpt", messages=ASK, tools=[tool])

    [sent] = live.upstream_requests()[-1]["body"]["tools"]
    assert sent["function"]["parameters"] == parameters


MANY_TOOLS = [
    {"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}
    for i in range(129)
]
# Metaschema checks cost ~3 ms per KiB of schema on the serving loop: one tool's is bounded...
HUGE_SCHEMA = {
    "type": "object",
    "properties": {f"field_{i}": {"type": "string", "description": "x" * 100} for i in range(200)},
}
# ... and so are all of a request's (six tools of ~12 KiB each).
BIG_TOOLS = [
    {"type": "function", "function": {"name": f"big_{n}", "parameters": {
        "type": "object",
        "properties": {f"f{i}": {"type": "string", "description": "x" * 100} for i in range(100)},
    }}}
    for n in range(6)
]  # fmt: skip


@pytest.mark.parametrize(
    ("model", "changes", "param"),
    [
        ("gpt", {"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
         "tools.0.function.name"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "string"}}}]}, "tools.0.function.parameters"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {"a": {"type": "text"}}}}}]},
         "tools.0.function.parameters.properties.a.type"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {"a": {"type": "string", "pattern": "(["}}}}}]},
         "tools.0.function.parameters.properties.a.pattern"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {"a": {"oneOf": [{"minimum": "0"}]}}}}}]},
         "tools.0.function.parameters.properties.a.oneOf.0.minimum"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters": {
            "type": "object", "properties": {"a": {"items": [{"type": "string"}]}}}}}]},
         "tools.0.function.parameters.properties.a.items"),
        ("gpt", {"tools": MANY_TOOLS}, "tools"),
        ("gpt", {"tools": [{"type": "function", "function": {"name": "x", "parameters":
            HUGE_SCHEMA}}]}, "tools.0.function.parameters"),
        ("gpt", {"tools": BIG_TOOLS}, "tools"),
        ("gpt", {"tools": [WEATHER, WEATHER]}, "tools.1.function.name"),
        ("clocked", {"tools": [{"type": "function", "function": {"name": "current_time"}}]},
         "tools.0.function.name"),
        ("gpt", {"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ("gpt", {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {
            "name": "get_time"}}}, "tool_choice.function.name"),
        ("gpt", {"tool_choice": "required"}, "tool_choice"),
        ("gpt", {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
         "messages.1.tool_call_id"),
        ("gpt", {"messages": [
            *ASK,
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "tool", "content": "Sunny"},
        ]}, "messages.2.tool_call_id"),
        ("gpt", {"messages": [
            *ASK,
            {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{}"}}]},
            {"role": "user", "content": "never mind"},
        ]}, "messages.1.tool_calls"),
        ("gpt", {"functions": [{"name": "get_weather"}]}, "functions"),
    ],
)  # fmt: skip
def test_a_bad_tool_shape_is_a_400_naming_the_field_and_nothing_goes_upstream(
    live: Live, model: str, changes: dict[str, Any], param: str
) -> None:
    before = live.upstream_total()
    request: dict[str, Any] = {"model": model, "messages": ASK, **changes}

    with pytest.raises(openai.BadRequestError) as caught:
        live.client().chat.completions.create(**request)

    assert caught.value.param == param
    assert param in str(caught.value)
    assert live.upstream_total() == before
