"""Anthropic Messages API, plain and streamed (server-sent events)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agents.runtime.errors import ProviderError, classify_http
from agents.runtime.providers.base import (
    HttpSession,
    OnToken,
    estimate_messages,
    estimate_tokens,
    post_chat,
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


def parse_response(data: Any, request: ChatRequest) -> ChatResponse:
    try:
        blocks = data["content"]
        texts = [b["text"] for b in blocks if b.get("type") == "text"]
        calls = tuple(
            ToolCall(b["id"], b["name"], json.dumps(b.get("input") or {}))
            for b in blocks
            if b.get("type") == "tool_use"
        )
        usage_data = data["usage"]
        usage = Usage(int(usage_data["input_tokens"]), int(usage_data["output_tokens"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProviderError(f"malformed response: missing {exc}") from None
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
            state=_Stream(),
            read_stream=_read_stream,
            finish_stream=_finish,
        )


def _finish(stream: _Stream, request: ChatRequest) -> ChatResponse:
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
            event = json.loads(line[5:].strip())
        except ValueError:
            raise ProviderError("malformed stream: a data line is not JSON") from None
        if not isinstance(event, dict):
            raise ProviderError("malformed stream: an event is not an object")
        kind = event.get("type")
        if kind == "message_start":
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
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                stream.parts.append(delta["text"])
                await on_token(delta["text"])
            elif delta.get("type") == "input_json_delta":
                slot = stream.blocks.setdefault(int(event.get("index", 0)), {"type": "tool_use"})
                slot["json"] = slot.get("json", "") + str(delta.get("partial_json", ""))
        elif kind == "message_delta":
            usage = event.get("usage") or {}
            if usage.get("output_tokens") is not None:
                stream.output_tokens = int(usage["output_tokens"])
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop:
                stream.stop_reason = str(stop)
        elif kind == "message_stop":
            stream.done = True
            return
        elif kind == "error":
            error = event.get("error") or {}
            cls = classify_http(
                529 if error.get("type") == "overloaded_error" else 500,
                error_type=str(error.get("type") or ""),
            )
            raise cls(f"stream error: {error.get('message', error)}")
