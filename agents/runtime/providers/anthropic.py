"""Anthropic Messages API, plain and streamed (server-sent events)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from agents.runtime.errors import ProviderError, classify_http
from agents.runtime.providers.base import (
    HttpSession,
    OnToken,
    estimate_messages,
    estimate_tokens,
    malformed_stream,
    post_chat,
    token_count,
)
from agents.runtime.types import ChatRequest, ChatResponse, Deployment, ToolCall, ToolChoice, Usage

API_VERSION = "2023-06-01"
_STOP = {
    "end_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "stop_sequence": "stop",
}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {}


def _tool_choice(choice: ToolChoice) -> dict[str, Any]:
    """OpenAI's tool_choice in Anthropic's words: required is ``any``, a function ``tool``."""
    if choice.mode == "function":
        return {"type": "tool", "name": choice.name}
    return {"type": "any" if choice.mode == "required" else choice.mode}


def build_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    """Messages API body: system prompt apart, tool calls/results as content blocks, and
    consecutive same-role messages merged (the API wants user/assistant alternation)."""
    system = "\n\n".join(m.content for m in request.messages if m.role == "system")
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id or "",
                    "content": message.content,
                }
            )
        else:
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": _arguments(call.arguments),
                    }
                )
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": dict(t.parameters)}
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
    if stream:
        body["stream"] = True
    return body


def usage_of(data: Any) -> Usage | None:
    """A message's ``usage``, when it holds both token counts."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    input_tokens = token_count(usage.get("input_tokens"))
    output_tokens = token_count(usage.get("output_tokens"))
    if input_tokens is None or output_tokens is None:
        return None
    return Usage(input_tokens, output_tokens)


def parse_response(data: Any, request: ChatRequest) -> ChatResponse:
    try:
        blocks = data["content"]
        texts = [b["text"] for b in blocks if b.get("type") == "text"]
        calls = tuple(
            ToolCall(str(b["id"]), str(b["name"]), json.dumps(b.get("input") or {}))
            for b in blocks
            if b.get("type") == "tool_use"
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProviderError(f"malformed response: missing {exc}") from None
    if not all(isinstance(text, str) for text in texts):
        raise ProviderError("malformed response: a text block is not text")
    usage = usage_of(data)
    if usage is None:
        raise ProviderError("malformed response: missing 'usage'")
    finish = _STOP.get(str(data.get("stop_reason")), str(data.get("stop_reason") or "stop"))
    return ChatResponse("".join(texts), calls, usage, finish)


@dataclass
class _Stream:
    parts: list[str] = field(default_factory=list)
    blocks: dict[int, dict[str, str]] = field(default_factory=dict)
    input_tokens: int | None = None
    output_tokens: int | None = None
    stop_reason: str | None = None
    done: bool = False
    final_usage: bool = False  # message_delta reported the output tokens
    # Why the stream is unusable (an event that is not JSON in UTF-8, or of the wrong shape).
    # The rest is still read, for the usage at its end, but no longer handed over.
    broken: str | None = None

    def estimated(self, request: ChatRequest) -> tuple[int, int]:
        text = "".join(self.parts) + "".join(b.get("json", "") for b in self.blocks.values())
        return (
            self.input_tokens
            if self.input_tokens is not None
            else estimate_messages(request.messages),
            max(self.output_tokens or 0, estimate_tokens(text)),
        )


class AnthropicProvider:
    def __init__(self, http: HttpSession) -> None:
        self._http = http

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        url = deployment.provider.base_url.rstrip("/") + "/v1/messages"
        headers = {"anthropic-version": API_VERSION}
        if deployment.provider.api_key:
            headers["x-api-key"] = deployment.provider.api_key
        return await post_chat(
            self._http,
            url=url,
            headers=headers,
            body=build_body(request, stream=on_token is not None),
            request=request,
            timeout_s=timeout_s,
            on_token=on_token,
            parse=parse_response,
            usage_of=usage_of,
            state=_Stream(),
            read_stream=_read_stream,
            finish_stream=_finish,
        )


def _finish(stream: _Stream, request: ChatRequest) -> ChatResponse:
    if stream.broken is not None:
        reported = stream.final_usage and stream.input_tokens is not None
        usage = Usage(stream.input_tokens or 0, stream.output_tokens or 0) if reported else None
        raise malformed_stream(stream.broken, usage)
    if not stream.done or stream.output_tokens is None or stream.input_tokens is None:
        raise ProviderError("stream ended without message_stop and usage")
    calls = tuple(
        ToolCall(b.get("id", f"toolu_{i}"), b.get("name", ""), b.get("json") or "{}")
        for i, b in sorted(stream.blocks.items())
        if b.get("type") == "tool_use"
    )
    finish = _STOP.get(stream.stop_reason or "", stream.stop_reason or "stop")
    return ChatResponse(
        "".join(stream.parts), calls, Usage(stream.input_tokens, stream.output_tokens), finish
    )


async def _read_stream(
    response: aiohttp.ClientResponse, stream: _Stream, on_token: OnToken
) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # "event:" lines repeat the type that the data carries
        try:
            event = orjson.loads(line[5:].strip())  # strict: invalid UTF-8 or lone surrogates
        except ValueError:
            stream.broken = stream.broken or "a data line is not JSON in UTF-8"
            continue
        if not isinstance(event, dict):
            stream.broken = stream.broken or "an event is not an object"
            continue
        try:
            text = _read_event(event, stream)
        except (AttributeError, TypeError, ValueError):
            stream.broken = stream.broken or "an event has the wrong shape"
            continue
        if stream.done:
            return
        if text is not None and stream.broken is None:
            await on_token(text)


def _read_event(event: dict[str, Any], stream: _Stream) -> str | None:
    """Take one event into ``stream``; the text to hand over, if it carries some. A stream
    error event raises its failure."""
    kind = event.get("type")
    if kind == "content_block_delta":
        delta = event.get("delta") or {}
        if delta.get("type") == "text_delta" and delta.get("text"):
            text = delta["text"]
            if not isinstance(text, str):
                raise TypeError("text is not text")
            stream.parts.append(text)
            return text
        if delta.get("type") == "input_json_delta":
            slot = stream.blocks.setdefault(int(event.get("index", 0)), {"type": "tool_use"})
            slot["json"] = slot.get("json", "") + str(delta.get("partial_json", ""))
    elif kind == "message_start":
        usage = (event.get("message") or {}).get("usage") or {}
        stream.input_tokens = int(usage.get("input_tokens") or 0)
        if usage.get("output_tokens") is not None:
            stream.output_tokens = int(usage["output_tokens"])
    elif kind == "content_block_start":
        block = event.get("content_block") or {}
        slot = stream.blocks.setdefault(int(event.get("index", 0)), {})
        slot["type"] = str(block.get("type", "text"))
        if block.get("type") == "tool_use":
            slot["id"] = str(block.get("id", ""))
            slot["name"] = str(block.get("name", ""))
    elif kind == "message_delta":
        usage = event.get("usage") or {}
        if usage.get("output_tokens") is not None:
            stream.output_tokens = int(usage["output_tokens"])
            stream.final_usage = True
        stop = (event.get("delta") or {}).get("stop_reason")
        if stop:
            stream.stop_reason = str(stop)
    elif kind == "message_stop":
        stream.done = True
    elif kind == "error":
        error = event.get("error") or {}
        cls = classify_http(
            529 if error.get("type") == "overloaded_error" else 500,
            error_type=str(error.get("type") or ""),
        )
        raise cls(f"stream error: {error.get('message', error)}")
    return None
