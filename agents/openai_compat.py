"""The OpenAI-compatible endpoint (``/v1/chat/completions``, ``/v1/models``) as a lean ASGI app.

It is the hot path, so it does not go through Django's request/response machinery or its
middleware (which cost about 3 ms of CPU per request on this machine; docs/DECISIONS.md): the
ASGI router in ``console/asgi.py`` hands ``/v1/`` straight here. Authentication, agent configs
and budgets come from the engine's in-memory snapshot; the only I/O is the shared-state round
trips and the provider call.

The agent's name is the ``model``; its system prompt and every safeguard apply. Degraded
executions come back as OpenAI-format errors (429 with ``Retry-After``, 503), so SDK retry logic
works; ``stream: true`` answers with OpenAI's server-sent events. A client that disconnects
cancels the execution, which settles its budget for what was produced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Literal

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.auth import Principal, principal_for
from agents.engine import get_engine
from agents.runtime.types import ExecutionRequest, ExecutionResult, ExecutionStatus, Message

log = logging.getLogger("breakwater.openai")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class _MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionIn(BaseModel):
    """The request fields Breakwater honours; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=64)
    messages: list[_MessageIn] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    tools: list[Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None


def _error(status: int, message: str, type_: str, code: str | None = None) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return status, json.dumps(body).encode()


# Degraded executions as OpenAI errors: (HTTP status, error type, code).
_DEGRADED: dict[str, tuple[int, str, str]] = {
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "circuit_open": (503, "service_unavailable", "circuit_open"),
    "timeout": (503, "service_unavailable", "timeout"),
    "llm_error": (503, "service_unavailable", "upstream_error"),
    "tool_error": (503, "service_unavailable", "tool_error"),
}


def result_error(result: ExecutionResult) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, extra headers) for an execution that did not succeed."""
    headers: dict[str, str] = {}
    if result.status == ExecutionStatus.DEGRADED:
        status, type_, code = _DEGRADED.get(
            result.fallback_reason or "llm_error", _DEGRADED["llm_error"]
        )
        if status == 429:
            headers["retry-after"] = str(max(1, math.ceil(result.retry_after or 1)))
        return (*_error(status, result.output, type_, code), headers)
    error = result.error or {}
    if error.get("type") == "client_error":
        return (*_error(400, error.get("message", "bad request"), "invalid_request_error"), headers)
    return (*_error(500, error.get("message", "internal error"), "server_error"), headers)


def completion_body(result: ExecutionResult, model: str) -> dict[str, Any]:
    usage = result.usage
    return {
        "id": f"chatcmpl-{result.execution_id}",
        "object": "chat.completion",
        "created": int(result.created_at),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.output, "refusal": None},
                "logprobs": None,
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": usage.input_tokens,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
        "system_fingerprint": None,
        "breakwater": {
            "execution_id": result.execution_id,
            "cached": result.cached,
            "fallback_used": result.fallback_used,
            "fallback_reason": result.fallback_reason,
            "cost_usd": float(result.cost_usd),
        },
    }


class _Responder:
    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def start(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        await self.start(status, {"content-type": "application/json", **(headers or {})})
        await self.body(data)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _authenticate(scope: Scope) -> Principal | None:
    value = _header(scope, b"authorization") or ""
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return await principal_for(token.strip())


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """ASGI entry for ``/v1/...``."""
    out = _Responder(send)
    path = scope["path"]
    method = scope["method"]
    principal = await _authenticate(scope)
    if principal is None:
        await out.json(
            *_error(
                401, "Incorrect or missing API key.", "invalid_request_error", "invalid_api_key"
            ),
            {"www-authenticate": "Bearer"},
        )
        return
    if path == "/v1/models" and method == "GET":
        await _models(principal, out)
    elif path == "/v1/chat/completions" and method == "POST":
        await _chat(scope, receive, principal, out)
    elif path in ("/v1/models", "/v1/chat/completions"):
        await out.json(*_error(405, f"{method} not allowed", "invalid_request_error"))
    else:
        await out.json(*_error(404, f"unknown endpoint {path}", "invalid_request_error"))


async def _models(principal: Principal, out: _Responder) -> None:
    try:
        principal.require("read")
    except Exception:
        principal.require("execute")  # executing keys may list what they can call
    engine = get_engine()
    names = sorted(n for n in engine.config.snapshot.agents if principal.may_use(n))
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "breakwater"} for n in names]
    await out.json(200, json.dumps({"object": "list", "data": data}).encode())


async def _chat(scope: Scope, receive: Receive, principal: Principal, out: _Responder) -> None:
    if "execute" not in principal.scopes and "admin" not in principal.scopes:
        await out.json(*_error(403, "this API key lacks the 'execute' scope", "permission_error"))
        return
    raw = await _read_body(receive, settings.BREAKWATER_MAX_BODY_BYTES)
    if raw is None:
        await out.json(*_error(413, "request body exceeds the size limit", "invalid_request_error"))
        return
    try:
        payload = ChatCompletionIn.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        await out.json(*_error(400, f"{where}: {first['msg']}", "invalid_request_error"))
        return
    engine = get_engine()
    agent = engine.config.agent(payload.model)
    if agent is None or not principal.may_use(payload.model):
        await out.json(
            *_error(
                404,
                f"The model '{payload.model}' does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        )
        return
    if payload.tools:
        await out.json(
            *_error(
                400,
                "tools: client-side tools are not supported on this endpoint; declare tools on "
                "the agent instead",
                "invalid_request_error",
            )
        )
        return
    max_tokens = payload.max_completion_tokens or payload.max_tokens
    if max_tokens is not None and max_tokens > agent.max_tokens:
        await out.json(
            *_error(
                400,
                f"max_tokens: must be <= {agent.max_tokens} for model {payload.model}",
                "invalid_request_error",
            )
        )
        return
    messages = tuple(
        Message("system" if m.role == "developer" else m.role, m.text()) for m in payload.messages
    )
    cache_control = (_header(scope, b"cache-control") or "").lower()
    request = ExecutionRequest(
        agent=payload.model,
        messages=messages,
        execution_id=str(uuid.uuid4()),
        max_tokens=max_tokens,
        metadata={**(payload.metadata or {}), **({"user": payload.user} if payload.user else {})},
        api_key_id=principal.key_id,
        api_key_limits=principal.limits,
        bypass_cache="no-cache" in cache_control or "no-store" in cache_control,
    )
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        await _stream(receive, out, engine, request, include_usage)
        return
    task = asyncio.ensure_future(engine.execute(request))
    result = await _until_done_or_disconnect(task, receive)
    if result is None:
        return  # the client left; the execution was cancelled and settled
    if result.status == ExecutionStatus.SUCCEEDED:
        await out.json(200, json.dumps(completion_body(result, payload.model)).encode())
    else:
        status, body, headers = result_error(result)
        await out.json(status, body, headers)


async def _until_done_or_disconnect(
    task: asyncio.Future[ExecutionResult], receive: Receive
) -> ExecutionResult | None:
    """Wait for the execution; cancel it if the client disconnects first."""
    disconnect = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        waiting: set[asyncio.Future[Any]] = {task, disconnect}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnect.cancel()
        if not task.done():  # the client left (or we were cancelled): stop the execution
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _chunk(
    request: ExecutionRequest, created: int, delta: dict[str, Any], finish: str | None
) -> bytes:
    payload = {
        "id": f"chatcmpl-{request.execution_id}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": request.agent,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


async def _stream(
    receive: Receive, out: _Responder, engine: Any, request: ExecutionRequest, include_usage: bool
) -> None:
    """OpenAI server-sent events. Headers wait for the first token, so an execution that is
    refused or degraded before producing anything still answers with a real HTTP error."""
    created = int(time.time())
    sse_headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}

    async def on_token(text: str) -> None:
        if not out.started:
            await out.start(200, sse_headers)
            await out.body(
                _chunk(request, created, {"role": "assistant", "content": ""}, None), more=True
            )
        await out.body(_chunk(request, created, {"content": text}, None), more=True)

    task = asyncio.ensure_future(engine.execute(request, on_token=on_token))
    result = await _until_done_or_disconnect(task, receive)
    if result is None:
        return
    if not out.started:
        if result.status != ExecutionStatus.SUCCEEDED:
            status, body, headers = result_error(result)
            await out.json(status, body, headers)
            return
        # Succeeded without streaming tokens (a cached answer): send it as one delta.
        await out.start(200, sse_headers)
        await out.body(
            _chunk(request, created, {"role": "assistant", "content": ""}, None), more=True
        )
        if result.output:
            await out.body(_chunk(request, created, {"content": result.output}, None), more=True)
    if result.status == ExecutionStatus.SUCCEEDED:
        await out.body(_chunk(request, created, {}, result.finish_reason), more=True)
    else:
        # Part of an answer was already sent: end the stream with an error event.
        status, body, _ = result_error(result)
        await out.body(b"data: " + body + b"\n\n", more=True)
    if include_usage:
        usage = {
            "id": f"chatcmpl-{request.execution_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.agent,
            "choices": [],
            "usage": {
                "prompt_tokens": result.usage.input_tokens,
                "completion_tokens": result.usage.output_tokens,
                "total_tokens": result.usage.input_tokens + result.usage.output_tokens,
            },
        }
        await out.body(b"data: " + json.dumps(usage).encode() + b"\n\n", more=True)
    await out.body(b"data: [DONE]\n\n")
