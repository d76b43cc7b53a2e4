"""fakellm over real HTTP on 127.0.0.1: both wire formats, every fault, the admin API, the CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from django.core.management import CommandError, call_command

from agents.devtools.fakellm import (
    FakeLLM,
    FakeLLMThread,
    FaultConfig,
    FaultConfigError,
    parse_override,
)
from agents.devtools.fakellm.faults import config_from_options

ROOT = Path(__file__).resolve().parents[4]
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
WEATHER_OPENAI: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": WEATHER_SCHEMA,
    },
}
WEATHER_ANTHROPIC: dict[str, Any] = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": WEATHER_SCHEMA,
}

Start = Callable[..., Awaitable[tuple[FakeLLM, aiohttp.ClientSession]]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    """Start a fakellm with the given faults; returns it and a session bound to its URL."""
    servers: list[FakeLLM] = []
    sessions: list[aiohttp.ClientSession] = []

    async def _start(**faults: Any) -> tuple[FakeLLM, aiohttp.ClientSession]:
        server = await FakeLLM(FaultConfig(**faults)).start()
        servers.append(server)
        session = aiohttp.ClientSession(base_url=server.url)
        sessions.append(session)
        return server, session

    yield _start
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


@pytest.fixture
async def client(start: Start) -> aiohttp.ClientSession:
    _, session = await start()
    return session


def chat(content: str = "What is the capital of France, please?", **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
        ],
        **extra,
    }


def message(
    content: str = "What is the capital of France, please?", **extra: Any
) -> dict[str, Any]:
    return {
        "model": "claude-3-5-haiku-20241022",
        "max_tokens": 256,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for each SSE event in ``raw``."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        events.append((name, "\n".join(data)))
    return events


async def read_partial(response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
    """The bytes received and whether the body ended cleanly."""
    received = b""
    try:
        async for piece in response.content.iter_any():
            received += piece
    except aiohttp.ClientPayloadError:
        return received, False
    return received, True


async def openai_stream(
    session: aiohttp.ClientSession, body: dict[str, Any], **kwargs: Any
) -> list[dict[str, Any] | str]:
    async with session.post("/v1/chat/completions", json={**body, "stream": True}, **kwargs) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        raw = await r.read()
    return [data if data == "[DONE]" else json.loads(data) for _, data in sse_events(raw)]


async def anthropic_stream(
    session: aiohttp.ClientSession, body: dict[str, Any], **kwargs: Any
) -> list[tuple[str | None, dict[str, Any]]]:
    headers = {**ANTHROPIC_HEADERS, **kwargs.pop("headers", {})}
    async with session.post(
        "/v1/messages", json={**body, "stream": True}, headers=headers, **kwargs
    ) as r:
        assert r.status == 200
        raw = await r.read()
    return [(name, json.loads(data)) for name, data in sse_events(raw)]


async def stats(session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get("/_admin/stats") as r:
        data: dict[str, Any] = await r.json()
    return data


# --- OpenAI wire format ---------------------------------------------------------------------


async def test_an_openai_completion_echoes_the_prompt_with_usage_and_the_model(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 200
        assert r.headers["x-request-id"]
        body = await r.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].startswith("echo: What is the capital of France")
    assert len(choice["message"]["content"].split()) == 16
    texts = ["You are terse.", "What is the capital of France, please?"]
    expected_input = sum(map(len, texts)) // 4 + 2
    assert body["usage"] == {
        "prompt_tokens": expected_input,
        "completion_tokens": 16,
        "total_tokens": expected_input + 16,
    }


async def test_an_openai_completion_stops_at_max_tokens_with_finish_reason_length(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/chat/completions", json=chat(max_tokens=4)) as r:
        body = await r.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "echo: What is the"
    assert body["usage"]["completion_tokens"] == 4


async def test_an_openai_stream_ends_with_a_usage_chunk_and_done(
    client: aiohttp.ClientSession,
) -> None:
    chunks = await openai_stream(client, chat(stream_options={"include_usage": True}))
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert isinstance(usage_chunk, dict)
    assert usage_chunk["choices"] == []
    data = [c for c in chunks[:-2] if isinstance(c, dict)]
    assert all(c["usage"] is None and c["object"] == "chat.completion.chunk" for c in data)
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert data[-1]["choices"][0]["finish_reason"] == "stop"
    contents = [c["choices"][0]["delta"]["content"] for c in data[1:-1]]
    async with client.post("/v1/chat/completions", json=chat()) as r:
        whole = await r.json()
    assert "".join(contents) == whole["choices"][0]["message"]["content"]
    assert usage_chunk["usage"]["completion_tokens"] == len(contents)
    assert usage_chunk["usage"]["prompt_tokens"] == whole["usage"]["prompt_tokens"]


async def test_an_openai_stream_without_include_usage_sends_no_usage(
    client: aiohttp.ClientSession,
) -> None:
    chunks = await openai_stream(client, chat(max_tokens=3))
    assert chunks[-1] == "[DONE]"
    data = [c for c in chunks if isinstance(c, dict)]
    assert all("usage" not in c and c["choices"] for c in data)
    assert data[-1]["choices"][0]["finish_reason"] == "length"


async def test_an_openai_tool_call_round_trip(start: Start) -> None:
    _, client = await start(tool_call=True)
    request = chat("Weather in Paris?", tools=[WEATHER_OPENAI])
    async with client.post("/v1/chat/completions", json=request) as r:
        body = await r.json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Weather in Paris?", "days": 1}

    request["messages"] += [
        choice["message"],
        {"role": "tool", "tool_call_id": call["id"], "content": "Sunny, 21 C"},
    ]
    async with client.post("/v1/chat/completions", json=request) as r:
        answer = await r.json()
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["choices"][0]["message"]["content"].startswith("result: Sunny, 21 C")


async def test_streamed_openai_tool_call_deltas_reassemble_into_the_arguments(
    start: Start,
) -> None:
    _, client = await start(tool_call=True)
    chunks = await openai_stream(
        client,
        chat("Weather in Paris?", tools=[WEATHER_OPENAI], stream_options={"include_usage": True}),
    )
    data = [c for c in chunks if isinstance(c, dict) and c["choices"]]
    first = data[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["id"].startswith("call_")
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    pieces = [
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in data[1:-1]
    ]
    assert json.loads("".join(pieces)) == {"city": "Weather in Paris?", "days": 1}
    assert data[-1]["choices"][0]["finish_reason"] == "tool_calls"
    usage = chunks[-2]
    assert isinstance(usage, dict)
    assert usage["usage"]["completion_tokens"] == len(pieces)


async def test_declared_tools_get_text_unless_the_tool_call_flag_or_tool_choice_asks(
    client: aiohttp.ClientSession,
) -> None:
    request = chat(tools=[WEATHER_OPENAI])
    async with client.post("/v1/chat/completions", json=request) as r:
        assert (await r.json())["choices"][0]["finish_reason"] == "stop"
    async with client.post(
        "/v1/chat/completions", json={**request, "tool_choice": "required"}
    ) as r:
        assert (await r.json())["choices"][0]["finish_reason"] == "tool_calls"
    async with client.post(
        "/v1/chat/completions", json=request, headers={"x-fakellm-fault": "tool-call"}
    ) as r:
        assert (await r.json())["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_tool_choice_naming_an_undeclared_tool_is_a_400_in_either_format(
    client: aiohttp.ClientSession,
) -> None:
    forced: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
    request = chat(tools=[WEATHER_OPENAI], tool_choice=forced)
    async with client.post("/v1/chat/completions", json=request) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == "tool_choice"
    assert "get_time" in error["message"]

    request = message(tools=[WEATHER_ANTHROPIC], tool_choice={"type": "tool", "name": "get_time"})
    async with client.post("/v1/messages", json=request, headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 400
        assert "get_time" in (await r.json())["error"]["message"]

    forced["function"]["name"] = "get_weather"
    request = chat(tools=[WEATHER_OPENAI], tool_choice=forced)
    async with client.post("/v1/chat/completions", json=request) as r:
        assert (await r.json())["choices"][0]["message"]["tool_calls"][0]["function"][
            "name"
        ] == "get_weather"


# --- Anthropic wire format ------------------------------------------------------------------


async def test_an_anthropic_message_has_a_text_block_stop_reason_and_usage(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 200
        assert r.headers["request-id"]
        body = await r.json()
    assert body["type"] == "message"
    assert body["role"] == "assistant"
    assert body["model"] == "claude-3-5-haiku-20241022"
    assert body["stop_reason"] == "end_turn"
    (block,) = body["content"]
    assert block["type"] == "text"
    assert block["text"].startswith("echo: What is the capital of France")
    async with client.post("/v1/chat/completions", json=chat()) as r:
        openai = await r.json()
    assert body["usage"] == {
        "input_tokens": openai["usage"]["prompt_tokens"],  # one conversation, one count
        "output_tokens": 16,
    }


async def test_an_anthropic_message_stops_at_max_tokens(client: aiohttp.ClientSession) -> None:
    request = message(max_tokens=2)
    async with client.post("/v1/messages", json=request, headers=ANTHROPIC_HEADERS) as r:
        body = await r.json()
    assert body["stop_reason"] == "max_tokens"
    assert body["content"][0]["text"] == "echo: What"
    assert body["usage"]["output_tokens"] == 2


async def test_an_anthropic_stream_follows_the_documented_event_sequence(
    client: aiohttp.ClientSession,
) -> None:
    events = await anthropic_stream(client, message())
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(name == data["type"] for name, data in events)
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert deltas
    assert all(d["type"] == "text_delta" for d in deltas)
    start_message = events[0][1]["message"]
    assert start_message["content"] == []
    assert start_message["usage"]["input_tokens"] > 0
    final = events[-2][1]
    assert final["delta"]["stop_reason"] == "end_turn"
    assert final["usage"]["output_tokens"] == len(deltas)
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        whole = await r.json()
    assert "".join(d["text"] for d in deltas) == whole["content"][0]["text"]


async def test_an_anthropic_tool_use_round_trip_streamed_and_not(start: Start) -> None:
    _, client = await start(tool_call=True)
    request = message("Weather in Paris?", tools=[WEATHER_ANTHROPIC])
    async with client.post("/v1/messages", json=request, headers=ANTHROPIC_HEADERS) as r:
        body = await r.json()
    assert body["stop_reason"] == "tool_use"
    (block,) = body["content"]
    assert block["type"] == "tool_use"
    assert block["name"] == "get_weather"
    assert block["input"] == {"city": "Weather in Paris?", "days": 1}

    events = await anthropic_stream(client, request)
    assert events[1][1]["content_block"]["type"] == "tool_use"
    partial = [
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    ]
    assert json.loads("".join(partial)) == block["input"]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"

    request["messages"] += [
        {"role": "assistant", "content": body["content"]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": block["id"], "content": "Sunny, 21 C"}
            ],
        },
    ]
    async with client.post("/v1/messages", json=request, headers=ANTHROPIC_HEADERS) as r:
        answer = await r.json()
    assert answer["stop_reason"] == "end_turn"
    assert answer["content"][0]["text"].startswith("result: Sunny, 21 C")


async def test_anthropic_requests_need_the_version_header_and_max_tokens(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/messages", json=message(), headers={"x-api-key": "k"}) as r:
        assert r.status == 400
        body = await r.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in body["error"]["message"]
    request = message()
    del request["max_tokens"]
    async with client.post("/v1/messages", json=request, headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 400
        assert "max_tokens" in (await r.json())["error"]["message"]


async def test_invalid_openai_requests_get_a_400_naming_the_param(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/chat/completions", json={"model": "m", "messages": []}) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    async with client.post("/v1/chat/completions", data=b"{not json") as r:
        assert r.status == 400


async def test_models_are_listed_in_the_shape_of_the_caller(
    client: aiohttp.ClientSession,
) -> None:
    async with client.get("/v1/models") as r:
        openai = await r.json()
    assert openai["object"] == "list"
    assert {"gpt-4o-mini", "claude-3-5-haiku-20241022"} <= {m["id"] for m in openai["data"]}
    async with client.get("/v1/models", headers=ANTHROPIC_HEADERS) as r:
        anthropic = await r.json()
    assert anthropic["has_more"] is False
    assert all(m["type"] == "model" for m in anthropic["data"])


async def test_a_configured_api_key_is_enforced_in_both_formats(start: Start) -> None:
    _, client = await start(api_key="sk-right")
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-wrong"}
    ) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "invalid_api_key"
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer sk-right"}
    ) as r:
        assert r.status == 200
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 401
        assert (await r.json())["error"]["type"] == "authentication_error"
    headers = {**ANTHROPIC_HEADERS, "x-api-key": "sk-right"}
    async with client.post("/v1/messages", json=message(), headers=headers) as r:
        assert r.status == 200


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "openai_type", "anthropic_type"),
    [
        (429, "requests", "rate_limit_error"),
        (500, "server_error", "api_error"),
        (502, "server_error", "api_error"),
        (503, "server_error", "api_error"),
        (529, "server_error", "overloaded_error"),
    ],
)
async def test_injected_errors_carry_the_status_the_body_and_retry_after(
    start: Start, status: int, openai_type: str, anthropic_type: str
) -> None:
    _, client = await start(error_rate=1, error_status=status, retry_after=2.5)
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == status
        error = (await r.json())["error"]
        openai_retry = r.headers.get("Retry-After")
    assert error["type"] == openai_type
    assert set(error) == {"message", "type", "code", "param"}
    if status == 429:
        assert error["code"] == "rate_limit_exceeded"
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        assert r.status == status
        body = await r.json()
        anthropic_retry = r.headers.get("Retry-After")
    assert body["type"] == "error"
    assert body["error"]["type"] == anthropic_type
    expected = "3" if status in (429, 503) else None  # 2.5 s rounded up to whole seconds
    assert openai_retry == expected
    assert anthropic_retry == expected


async def test_quota_exhaustion_is_insufficient_quota_for_openai_and_credit_for_anthropic(
    start: Start,
) -> None:
    _, client = await start(quota_exhausted=True)
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 429
        error = (await r.json())["error"]
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "insufficient_quota"
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        assert r.status == 400
        body = await r.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert "credit balance is too low" in body["error"]["message"]


async def test_a_hang_is_seen_as_a_client_timeout_and_released_on_disconnect(
    start: Start,
) -> None:
    _, client = await start(hang_rate=1)
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(
            "/v1/chat/completions", json=chat(), timeout=aiohttp.ClientTimeout(total=0.3)
        ) as r:
            await r.read()
    seen = await stats(client)
    assert seen["endpoints"]["/v1/chat/completions"]["outcomes"] == {"hang": 1}
    for _ in range(100):  # the server notices the disconnect within a poll interval
        if (await stats(client))["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await stats(client))["in_flight"] == 0


async def test_shutting_down_releases_hanging_requests(start: Start) -> None:
    server, client = await start()

    async def hang() -> None:
        async with client.post(
            "/v1/chat/completions", json=chat(), headers={"x-fakellm-fault": "hang"}
        ) as r:
            await r.read()

    task = asyncio.create_task(hang())
    for _ in range(500):  # until the request is in (bounded)
        if server.state.stats.in_flight:
            break
        await asyncio.sleep(0.01)
    assert server.state.stats.in_flight == 1
    await server.close()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, 10)


async def test_a_client_giving_up_mid_stream_is_released_quietly(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(asyncio.TimeoutError):
        async with client.post(
            "/v1/chat/completions",
            json=chat(stream=True),
            headers={"x-fakellm-fault": "token=50"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as r:
            await r.read()
    for _ in range(100):  # the next delta write notices the disconnect (bounded wait)
        if (await stats(client))["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert (await stats(client))["in_flight"] == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_cut_openai_stream_lacks_the_usage_chunk_and_done(start: Start) -> None:
    _, client = await start(cut_stream_rate=1)
    request = chat(stream=True, stream_options={"include_usage": True})
    async with client.post("/v1/chat/completions", json=request) as r:
        assert r.status == 200
        received, clean = await read_partial(r)
    assert not clean
    chunks = [json.loads(data) for _, data in sse_events(received)]
    assert len(chunks) > 1  # the role chunk and some content arrived
    assert all(c["choices"] and c["choices"][0]["finish_reason"] is None for c in chunks)
    assert b"[DONE]" not in received
    # Non-streaming requests are not cut by cut_stream_rate.
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert (await r.json())["choices"][0]["finish_reason"] == "stop"


async def test_a_cut_anthropic_stream_lacks_message_stop(start: Start) -> None:
    _, client = await start(cut_stream_rate=1)
    async with client.post(
        "/v1/messages", json=message(stream=True), headers=ANTHROPIC_HEADERS
    ) as r:
        received, clean = await read_partial(r)
    assert not clean
    names = [name for name, _ in sse_events(received)]
    assert "content_block_delta" in names
    assert "message_delta" not in names
    assert "message_stop" not in names


async def test_cut_after_n_sends_exactly_n_deltas_and_cuts_plain_bodies_too(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post(
        "/v1/messages",
        json=message(stream=True),
        headers={**ANTHROPIC_HEADERS, "x-fakellm-fault": "cut=3"},
    ) as r:
        received, clean = await read_partial(r)
    assert not clean
    assert [n for n, _ in sse_events(received)].count("content_block_delta") == 3
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"x-fakellm-fault": "cut"}
    ) as r:
        assert r.status == 200
        _, clean = await read_partial(r)
    assert not clean


async def test_malformed_answers_fail_to_parse(start: Start) -> None:
    _, client = await start(malformed_rate=1)
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 200
        text = await r.text()
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        with pytest.raises(json.JSONDecodeError):
            json.loads(await r.text())
    async with client.post("/v1/chat/completions", json=chat(stream=True)) as r:
        raw = await r.read()
    datas = [data for _, data in sse_events(raw)]
    broken = [d for d in datas if d != "[DONE]" and not _parses(d)]
    assert broken


async def test_invalid_utf8_answers_are_whole_with_usage_but_not_utf8_in_both_formats(
    start: Start,
) -> None:
    _, client = await start(malformed_rate=1, malformed_mode="invalid_utf8")
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 200
        raw = await r.read()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    body = json.loads(raw.decode("utf-8", "replace"))  # complete: only its text is broken
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["message"]["content"].startswith("echo:\ufffd\ufffd What")

    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        raw = await r.read()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert json.loads(raw.decode("utf-8", "replace"))["usage"]["output_tokens"] == 16

    streamed = chat(stream=True, stream_options={"include_usage": True})
    async with client.post("/v1/chat/completions", json=streamed) as r:
        raw = await r.read()
    events = sse_events(raw.replace(b"\xff\xfe", b""))  # every event there, usage included
    assert events[-1][1] == "[DONE]"
    assert json.loads(events[-2][1])["usage"]["completion_tokens"] == 16
    broken = [line for line in raw.split(b"\n\n") if b"\xff\xfe" in line]
    assert len(broken) == 1
    assert b'"content":"echo:' in broken[0]


async def test_the_override_header_picks_the_malformed_mode(
    client: aiohttp.ClientSession,
) -> None:
    headers = {"x-fakellm-fault": "malformed=invalid-utf8"}
    async with client.post("/v1/chat/completions", json=chat(), headers=headers) as r:
        raw = await r.read()
    assert b"\xff\xfe" in raw
    assert json.loads(raw.decode("utf-8", "replace"))["usage"]["completion_tokens"] == 16
    headers = {"x-fakellm-fault": "malformed=truncated"}
    async with client.post("/v1/chat/completions", json=chat(), headers=headers) as r:
        assert not _parses(await r.text())
    headers = {"x-fakellm-fault": "malformed=garbage"}
    async with client.post("/v1/chat/completions", json=chat(), headers=headers) as r:
        assert r.status == 400
        assert (await r.json())["error"]["param"] == "x-fakellm-fault malformed"


def test_a_bad_malformed_mode_is_refused_naming_the_field() -> None:
    with pytest.raises(FaultConfigError, match=r"^--malformed-mode: must be one of truncated"):
        config_from_options({"malformed_mode": "sometimes"})


def _parses(data: str) -> bool:
    try:
        json.loads(data)
    except json.JSONDecodeError:
        return False
    return True


async def test_latency_is_applied_before_the_answer(start: Start) -> None:
    _, client = await start(latency_ms=150)
    began = time.monotonic()
    async with client.post("/v1/chat/completions", json=chat()) as r:
        await r.read()
    assert time.monotonic() - began >= 0.15


async def test_stream_delays_apply_before_the_first_token_and_between_tokens(
    client: aiohttp.ClientSession,
) -> None:
    began = time.monotonic()
    await openai_stream(
        client, chat(), headers={"x-fakellm-fault": "first-token=100, token=20, tokens=5"}
    )
    assert time.monotonic() - began >= 0.1 + 4 * 0.02


async def test_seed_makes_the_error_choices_reproducible(start: Start) -> None:
    async def statuses(session: aiohttp.ClientSession) -> list[int]:
        seen = []
        for _ in range(30):
            async with session.post("/v1/chat/completions", json=chat()) as r:
                seen.append(r.status)
        return seen

    _, first = await start(error_rate=0.5, error_status=503, seed=1234)
    _, second = await start(error_rate=0.5, error_status=503, seed=1234)
    _, other = await start(error_rate=0.5, error_status=503, seed=99)
    sequence = await statuses(first)
    assert set(sequence) == {200, 503}
    assert await statuses(second) == sequence
    assert await statuses(other) != sequence
    async with first.post("/_admin/reset") as r:
        assert r.status == 200
    assert await statuses(first) == sequence  # reset reseeds


# --- per-request override -------------------------------------------------------------------


async def test_the_override_header_forces_one_request_without_changing_global_state(
    start: Start,
) -> None:
    _, client = await start(error_rate=1, error_status=500)
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"x-fakellm-fault": "ok"}
    ) as r:
        assert r.status == 200
    async with client.post(
        "/v1/chat/completions",
        json=chat(),
        headers={"x-fakellm-fault": "status=503; retry-after=7"},
    ) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "7"
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 500
    async with client.get("/_admin/faults") as r:
        assert (await r.json())["error_rate"] == 1


async def test_a_bad_override_header_is_a_400_naming_the_directive(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"x-fakellm-fault": "status=abc"}
    ) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == "x-fakellm-fault status"
    assert "integer" in error["message"]


def test_override_syntax_parses_every_directive() -> None:
    override = parse_override(
        "status=429; retry-after=1.5, latency=10, first-token=20, token=3, tool-call=0, tokens=4"
    )
    assert override.outcome == "error"
    assert override.status == 429
    assert override.retry_after == 1.5
    assert override.latency_ms == 10
    assert override.first_token_ms == 20
    assert override.token_ms == 3
    assert override.tool_call is False
    assert override.output_tokens == 4
    assert parse_override("cut=2").cut_after == 2
    for outcome in ("ok", "hang", "malformed", "quota"):
        assert parse_override(outcome).outcome == outcome
    with pytest.raises(FaultConfigError, match="conflicting"):
        parse_override("hang, status=500")


# --- admin API ------------------------------------------------------------------------------


async def test_the_admin_api_changes_faults_while_running(start: Start) -> None:
    _, client = await start(latency_ms=0, output_tokens=5)
    async with client.put("/_admin/faults", json={"error_rate": 1, "error_status": 502}) as r:
        assert r.status == 200
        replaced = await r.json()
    assert replaced["error_rate"] == 1
    assert replaced["output_tokens"] == 16
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 502
    async with client.post("/_admin/faults", json={"error_status": 503}) as r:
        merged = await r.json()
    assert merged["error_rate"] == 1
    assert merged["error_status"] == 503
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 503
    async with client.post("/_admin/reset") as r:
        assert (await r.json())["faults"]["output_tokens"] == 5  # back to the start-up config
    async with client.post("/v1/chat/completions", json=chat()) as r:
        assert r.status == 200
        assert (await r.json())["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_rate": 1.5}, "error_rate"),
        ({"error_rate": "half"}, "error_rate"),
        ({"error_status": 418}, "error_status"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"hang_rate": True}, "hang_rate"),
        ({"quota_exhausted": "yes"}, "quota_exhausted"),
        ({"retry_after": -3}, "retry_after"),
        ({"output_tokens": 0}, "output_tokens"),
        ({"seed": 1.5}, "seed"),
        ({"eror_rate": 0.1}, "eror_rate"),
        ([1, 2], "body"),
    ],
)
async def test_bad_admin_input_is_a_400_naming_the_field(
    client: aiohttp.ClientSession, body: Any, field: str
) -> None:
    async with client.post("/_admin/faults", json=body) as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    async with client.get("/_admin/faults") as r:
        assert await r.json() == FaultConfig().to_dict()  # nothing applied


async def test_stats_count_calls_per_endpoint_and_outcome(client: aiohttp.ClientSession) -> None:
    assert (await stats(client))["total"] == 0
    for _ in range(3):
        async with client.post("/v1/chat/completions", json=chat()) as r:
            await r.read()
    async with client.post(
        "/v1/chat/completions", json=chat(), headers={"x-fakellm-fault": "status=503"}
    ) as r:
        await r.read()
    await openai_stream(client, chat())
    async with client.post("/v1/messages", json=message(), headers=ANTHROPIC_HEADERS) as r:
        await r.read()
    seen = await stats(client)
    assert seen["total"] == 6
    assert seen["in_flight"] == 0
    openai = seen["endpoints"]["/v1/chat/completions"]
    assert openai == {
        "total": 5,
        "streams": 1,
        "outcomes": {"ok": 4, "error": 1},
        "statuses": {"200": 4, "503": 1},
    }
    assert seen["endpoints"]["/v1/messages"]["outcomes"] == {"ok": 1}
    async with client.post("/_admin/reset") as r:
        await r.read()
    assert (await stats(client))["total"] == 0


async def test_recent_requests_keep_the_headers_and_body_the_client_sent(
    client: aiohttp.ClientSession,
) -> None:
    async with client.post("/v1/messages", json=message("hi"), headers=ANTHROPIC_HEADERS) as r:
        await r.read()
    async with client.get("/_admin/requests", params={"limit": "1"}) as r:
        (item,) = (await r.json())["items"]
    assert item["endpoint"] == "/v1/messages"
    assert item["headers"]["x-api-key"] == "sk-ant-test"
    assert item["body"]["messages"] == [{"role": "user", "content": "hi"}]
    async with client.get("/_admin/requests", params={"limit": "x"}) as r:
        assert r.status == 400


# --- runners and CLI ------------------------------------------------------------------------


def test_the_thread_runner_serves_synchronous_clients() -> None:
    with FakeLLMThread(FaultConfig(output_tokens=3)) as fake:
        request = urllib.request.Request(
            fake.url + "/v1/chat/completions",
            data=json.dumps(chat()).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
    assert body["usage"]["completion_tokens"] == 3


def test_cli_options_are_validated_naming_the_flag() -> None:
    assert config_from_options({"error_rate": 0.25, "seed": 3}) == FaultConfig(
        error_rate=0.25, seed=3
    )
    with pytest.raises(FaultConfigError, match=r"^--error-status: must be one of"):
        config_from_options({"error_status": 404})


def test_python_dash_m_rejects_a_bad_flag_naming_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agents.devtools.fakellm", "--error-rate", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--error-rate: must be between 0 and 1" in result.stderr


def test_manage_py_fakellm_rejects_a_bad_flag_naming_it() -> None:
    with pytest.raises(CommandError, match=r"^--error-status: must be one of 429, 500"):
        call_command("fakellm", "--error-status", "404")


def test_manage_py_fakellm_serves_and_stops_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "manage.py", "fakellm", "--port", "0", "--output-tokens", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line + (process.stderr.read() if process.stderr else "")
        request = urllib.request.Request(
            match.group(1) + "/v1/chat/completions",
            data=json.dumps(chat()).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.loads(response.read())["usage"]["completion_tokens"] == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert "fakellm stopped" in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
