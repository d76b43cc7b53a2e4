"""OpenAI Chat Completions (any OpenAI-compatible server), plain and streamed (SSE)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from agents.runtime.errors import ProviderError
from agents.runtime.providers.base import (
    HttpSession,
    OnToken,
    estimate_messages,
    estimate_tokens,
    malformed_stream,
    post_chat,
    token_count,
)
from agents.runtime.types import (
    ChatRequest,
    ChatResponse,
    Deployment,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
    Usage,
)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool(tool: ToolSpec) -> dict[str, Any]:
    function: dict[str, Any] = {
        "name": tool.name,
        "description": tool.description,
        "parameters": dict(tool.parameters),
    }
    if tool.strict is not None:
        function["strict"] = tool.strict
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def build_body(request: ChatRequest, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "max_tokens": request.max_tokens,
    }
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def usage_of(data: Any) -> Usage | None:
    """``usage`` of a completion or a stream chunk, when it holds usable token counts."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict) or "prompt_tokens" not in usage:
        return None
    prompt = token_count(usage.get("prompt_tokens") or 0)
    completion = token_count(usage.get("completion_tokens") or 0)
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion)


def parse_response(data: Any, request: ChatRequest) -> ChatResponse:
    try:
        choice = data["choices"][0]
        message = choice["message"]
        content = message.get("content") or ""
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
            for c in message.get("tool_calls") or ()
        )
        finish = choice.get("finish_reason") or "stop"
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ProviderError(f"malformed response: missing {exc}") from None
    if not isinstance(content, str) or not all(
        isinstance(c.id, str) and isinstance(c.name, str) and isinstance(c.arguments, str)
        for c in calls
    ):
        raise ProviderError("malformed response: content or a tool call is not text")
    usage = usage_of(data)
    if usage is None:  # some compatible servers omit usage: estimate, never book a free call
        usage = Usage(
            estimate_messages(request.messages),
            estimate_tokens(content + "".join(c.arguments for c in calls)),
        )
    return ChatResponse(content, calls, usage, str(finish))


@dataclass
class _Stream:
    parts: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str | None = None
    done: bool = False
    # Why the stream is unusable (a data line that is not JSON in UTF-8, or not an object). The
    # rest is still read, for the usage that ends it, but no longer handed over.
    broken: str | None = None

    def estimated(self, request: ChatRequest) -> tuple[int, int]:
        if self.usage is not None:
            return self.usage.input_tokens, self.usage.output_tokens
        text = "".join(self.parts) + "".join(c.get("arguments", "") for c in self.calls.values())
        return estimate_messages(request.messages), estimate_tokens(text)


class OpenAIProvider:
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
        url = deployment.provider.base_url.rstrip("/") + "/chat/completions"
        headers = {}
        if deployment.provider.api_key:
            headers["Authorization"] = f"Bearer {deployment.provider.api_key}"
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
        # Charged for the usage the stream ended with, else for post_chat's estimate.
        raise malformed_stream(stream.broken, stream.usage)
    if not stream.done or stream.usage is None:
        raise ProviderError(f"stream ended without {'[DONE]' if not stream.done else 'usage'}")
    calls = tuple(
        ToolCall(c.get("id", f"call_{i}"), c.get("name", ""), c.get("arguments") or "{}")
        for i, c in sorted(stream.calls.items())
    )
    return ChatResponse("".join(stream.parts), calls, stream.usage, stream.finish or "stop")


async def _read_stream(
    response: aiohttp.ClientResponse, stream: _Stream, on_token: OnToken
) -> None:
    async for raw in response.content:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue  # comments, event names, blank separators
        payload = line[5:].strip()
        if payload == b"[DONE]":
            stream.done = True
            return
        try:
            chunk = orjson.loads(payload)  # strict: invalid UTF-8 or a lone surrogate is broken
        except ValueError:
            stream.broken = stream.broken or "a data line is not JSON in UTF-8"
            continue
        if not isinstance(chunk, dict):
            stream.broken = stream.broken or "a chunk is not an object"
            continue
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {}
            raise ProviderError(f"stream error: {error.get('message', chunk['error'])}")
        usage = usage_of(chunk)
        if usage is not None:
            stream.usage = usage
        text: str | None = None  # handed over once the chunk has been read whole
        try:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                piece = delta.get("content")
                if piece:
                    if not isinstance(piece, str):
                        raise TypeError("content is not text")
                    stream.parts.append(piece)
                    text = piece if text is None else text + piece
                for call in delta.get("tool_calls") or ():
                    slot = stream.calls.setdefault(int(call.get("index", 0)), {})
                    if call.get("id"):
                        slot["id"] = str(call["id"])
                    function = call.get("function") or {}
                    if function.get("name"):
                        slot["name"] = str(function["name"])
                    if function.get("arguments"):
                        slot["arguments"] = slot.get("arguments", "") + str(function["arguments"])
                if choice.get("finish_reason"):
                    stream.finish = str(choice["finish_reason"])
        except (AttributeError, TypeError, ValueError):
            stream.broken = stream.broken or "a chunk has the wrong shape"
            continue
        if text is not None and stream.broken is None:
            await on_token(text)
