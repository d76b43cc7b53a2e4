"""The OpenAI-compatible endpoint (``/v1/chat/completions``, ``/v1/models``) as a lean ASGI app.

It is the hot path, so it does not go through Django's request/response machinery or its
middleware (which cost about 3 ms of CPU per request on this machine; docs/DECISIONS.md): the
ASGI router in ``console/asgi.py`` hands ``/v1/`` straight here. The host check, HTTPS, the
security headers, ``X-Request-ID``, the key and the body limit are the shell's
(``agents.doors.shell``), as on the REST doors; the checks before an execution are
``agents.doors.execute.executable_agent``'s, answered here in OpenAI's error format
(:func:`refusal`). Authentication, agent configs and budgets come from the engine's in-memory
snapshot; the only I/O is the shared-state round trips and the provider call.

The agent's name is the ``model``; its system prompt and every safeguard apply. Degraded
executions come back as OpenAI-format errors (429 with ``Retry-After``, 503), so SDK retry logic
works; ``stream: true`` answers with OpenAI's server-sent events. A client that disconnects
cancels the execution, which settles its budget for what was produced.

Client tools pass through as on any OpenAI-compatible gateway: ``tools`` and ``tool_choice`` go
to the provider next to the agent's own tools; when the model calls a client tool the execution
ends there and the answer carries ``tool_calls`` (``finish_reason: "tool_calls"``); the caller
runs the tools and sends the results as ``tool`` messages in its next request. Every bad shape
(tool definitions, ``tool_choice``, a result that answers no call, a call left unanswered, a
name that collides with one of the agent's tools) is a 400 naming the field, before any
reservation or upstream call. A request without tools pays one cheap test for all of this.
The rules are in docs/OPENAI_TOOLS.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import orjson

from agents.access.auth import PermissionDenied, Principal
from agents.access.disclosure import render_error, sees_provider_text
from agents.config.live import AgentUnavailable
from agents.doors.execute import UNAVAILABLE, TokensOverCap, UnknownAgent, executable_agent
from agents.doors.openai_input import ChatCompletionIn, Invalid, bad_text, messages_of, tools_of
from agents.doors.shell import (
    ASGIApp,
    BadBody,
    ClientGone,
    Receive,
    Request,
    Responder,
    lean_door,
    parse,
    principal,
    read_body,
    until_done_or_disconnect,
)
from agents.engine import get_engine
from agents.runtime.types import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from core.errors import BodyTooLarge, Unauthenticated

log = logging.getLogger("breakwater.openai")

_ARGUMENT_FRAGMENT_CHARS = 64  # tool-call arguments are streamed in pieces of this size


def _error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> tuple[int, bytes]:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return status, orjson.dumps(body)


def _tool_calls_out(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


# Degraded executions as OpenAI errors: (HTTP status, error type, code).
_DEGRADED: dict[str, tuple[int, str, str]] = {
    "rate_limited": (429, "rate_limit_error", "rate_limit_exceeded"),
    "budget_exceeded": (429, "insufficient_quota", "insufficient_quota"),
    "circuit_open": (503, "service_unavailable", "circuit_open"),
    "timeout": (503, "service_unavailable", "timeout"),
    "llm_error": (503, "service_unavailable", "upstream_error"),
    "tool_error": (503, "service_unavailable", "tool_error"),
}


def result_error(
    result: ExecutionResult, *, full: bool
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, extra headers) for an execution that did not succeed. ``full``: the
    caller may read provider error text (``agents.access.disclosure``); else a typed summary."""
    headers: list[tuple[bytes, bytes]] = []
    if result.status == ExecutionStatus.DEGRADED:
        status, type_, code = _DEGRADED.get(
            result.fallback_reason or "llm_error", _DEGRADED["llm_error"]
        )
        if status == 429:
            wait = result.retry_after or 1.0
            if not math.isfinite(wait):
                # More tokens than the tokens-per-minute limit admits in any minute: waiting
                # cannot help, so it is the request's fault, not a rate to back off from.
                return (
                    *_error(
                        400,
                        "this request needs more tokens than the tokens-per-minute limit admits",
                        "invalid_request_error",
                        "rate_limit_exceeded",
                    ),
                    headers,
                )
            headers.append((b"retry-after", b"%d" % max(1, math.ceil(wait))))
        return (*_error(status, result.output, type_, code), headers)
    error = render_error(result.error, full=full) or {}
    if error.get("type") in UNAVAILABLE:  # nothing was admitted: retry soon
        headers.append((b"retry-after", b"%d" % max(1, math.ceil(result.retry_after or 1))))
        return (*_error(503, error["message"], "service_unavailable", error["type"]), headers)
    if error.get("type") == "client_error":
        return (*_error(400, error.get("message", "bad request"), "invalid_request_error"), headers)
    if error.get("type") == "price_unknown":
        # The agent's configuration, not the server, is at fault: an unpriced model under a
        # budget is refused (fail closed) until an operator sets its prices. apply and the API
        # refuse such a configuration; this is for one that got in another way (the admin, SQL).
        message = error.get("message", "the model has no price and a budget applies")
        return (*_error(503, message, "service_unavailable", "price_unknown"), headers)
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
                "message": (
                    {
                        "role": "assistant",
                        "content": result.output or None,
                        "refusal": None,
                        "tool_calls": _tool_calls_out(result.tool_calls),
                    }
                    if result.tool_calls
                    else {"role": "assistant", "content": result.output, "refusal": None}
                ),
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


def refusal(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, extra headers) of a refusal, in OpenAI's format (what the SDKs read)."""
    if isinstance(exc, Unauthenticated):
        status, body = _error(
            401, "Incorrect or missing API key.", "invalid_request_error", "invalid_api_key"
        )
        return status, body, [(b"www-authenticate", b"Bearer")]
    if isinstance(exc, PermissionDenied):
        return (*_error(403, exc.message, "permission_error"), [])
    if isinstance(exc, BodyTooLarge):
        return (*_error(413, exc.message, "invalid_request_error"), [])
    if isinstance(exc, BadBody):
        first = exc.errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        message = f"{where}: {first['msg']}"
        if first["type"] == "json_invalid" and (found := bad_text(exc.raw)) is not None:
            where, message = found
        return (*_error(400, message, "invalid_request_error", param=where), [])
    if isinstance(exc, Invalid):
        return (*_error(400, str(exc), "invalid_request_error", param=exc.param), [])
    if isinstance(exc, AgentUnavailable):
        return (*_error(503, exc.message, "service_unavailable", "agent_unavailable"), [])
    if isinstance(exc, UnknownAgent):  # AgentNotAllowed too: the same words
        message = f"The model '{exc.agent}' does not exist or you do not have access to it."
        return (*_error(404, message, "invalid_request_error", "model_not_found"), [])
    if isinstance(exc, TokensOverCap):
        message = f"max_tokens: must be <= {exc.cap} for model {exc.agent}"
        return (*_error(400, message, "invalid_request_error", param="max_tokens"), [])
    log.error("unhandled error at the OpenAI door", exc_info=exc)
    return (*_error(500, "internal error; it has been logged", "server_error"), [])


async def _door(request: Request, receive: Receive, out: Responder) -> None:
    """Everything under ``/v1/``, inside the shell (``agents.doors.shell``)."""
    path = request.scope["path"]
    method = request.scope["method"]
    try:
        caller = await principal(request)
        if path == "/v1/models" and method == "GET":
            await _models(caller, out)
        elif path == "/v1/chat/completions" and method == "POST":
            await _chat(request, receive, caller, out)
        elif path in ("/v1/models", "/v1/chat/completions"):
            await out.json(*_error(405, f"{method} not allowed", "invalid_request_error"))
        else:
            await out.json(*_error(404, f"unknown endpoint {path}", "invalid_request_error"))
    except ClientGone:
        raise  # nobody to answer
    except Exception as exc:
        if out.started:
            raise  # mid-stream: nothing left to say in a status line
        await out.json(*refusal(exc))


def lean_app(fallback: ASGIApp) -> ASGIApp:
    """The ASGI app for ``/v1/...``; ``fallback`` (Django) answers what Django answers before
    any route (a host outside ``ALLOWED_HOSTS``, the redirect to HTTPS)."""
    return lean_door(_door, fallback=fallback)


async def _models(caller: Principal, out: Responder) -> None:
    try:
        caller.require("read")
    except PermissionDenied:
        caller.require("execute")  # executing keys may list what they can call
    engine = get_engine()
    names = sorted(n for n in engine.config.snapshot.agents if caller.may_use(n))
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "breakwater"} for n in names]
    await out.json(200, orjson.dumps({"object": "list", "data": data}))


async def _chat(request: Request, receive: Receive, caller: Principal, out: Responder) -> None:
    # The order of the checks is every door's: key, body size, JSON, schema, scope, agent.
    raw = await read_body(request, receive)
    payload = parse(ChatCompletionIn, raw)
    if b"\\u0000" in raw and (found := bad_text(raw)) is not None:
        raise Invalid(*found)
    max_tokens = payload.max_completion_tokens or payload.max_tokens
    agent = executable_agent(caller, payload.model, max_tokens=max_tokens)
    client_tools: tuple[ToolSpec, ...] = ()
    tool_choice: ToolChoice | None = None
    if (
        payload.tools
        or payload.tool_choice is not None
        or payload.functions is not None
        or payload.function_call is not None
    ):
        client_tools, tool_choice = tools_of(payload, agent)
    messages = messages_of(payload.messages)
    cache_control = (request.header(b"cache-control") or "").lower()
    engine = get_engine()
    execution = ExecutionRequest(
        agent=payload.model,
        messages=messages,
        execution_id=str(uuid.uuid4()),
        max_tokens=max_tokens,
        metadata={**(payload.metadata or {}), **({"user": payload.user} if payload.user else {})},
        api_key_id=caller.key_id,
        api_key_limits=caller.limits,
        bypass_cache="no-cache" in cache_control or "no-store" in cache_control,
        tools=client_tools,
        tool_choice=tool_choice,
    )
    full = sees_provider_text(caller.scopes)
    if payload.stream:
        include_usage = bool(payload.stream_options and payload.stream_options.include_usage)
        await _stream(receive, out, engine, execution, include_usage, full=full)
        return
    task = asyncio.ensure_future(engine.execute(execution))
    result = await until_done_or_disconnect(task, receive)
    if result is None:
        return  # the client left; the execution was cancelled and settled
    if result.status == ExecutionStatus.SUCCEEDED:
        await out.json(200, orjson.dumps(completion_body(result, payload.model)))
    else:
        await out.json(*result_error(result, full=full))


_SSE_HEADERS = ((b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"))


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
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _tool_call_chunks(
    request: ExecutionRequest, created: int, calls: tuple[ToolCall, ...]
) -> bytes:
    """Tool calls as OpenAI streams them: per call, a delta with its index, id and name, then
    its arguments in pieces (the SDK joins them by index)."""
    events = []
    for index, call in enumerate(calls):
        head = {
            "index": index,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        events.append(_chunk(request, created, {"tool_calls": [head]}, None))
        text = call.arguments
        for start in range(0, len(text), _ARGUMENT_FRAGMENT_CHARS):
            piece = {
                "index": index,
                "function": {"arguments": text[start : start + _ARGUMENT_FRAGMENT_CHARS]},
            }
            events.append(_chunk(request, created, {"tool_calls": [piece]}, None))
    return b"".join(events)


async def _stream(
    receive: Receive,
    out: Responder,
    engine: Any,
    request: ExecutionRequest,
    include_usage: bool,
    *,
    full: bool,
) -> None:
    """OpenAI server-sent events. Headers wait for the first token, so an execution that is
    refused or degraded before producing anything still answers with a real HTTP error."""
    created = int(time.time())

    async def on_token(text: str) -> None:
        if not out.started:
            await out.start(200, _SSE_HEADERS)
            await out.body(
                _chunk(request, created, {"role": "assistant", "content": ""}, None), more=True
            )
        await out.body(_chunk(request, created, {"content": text}, None), more=True)

    task = asyncio.ensure_future(engine.execute(request, on_token=on_token))
    result = await until_done_or_disconnect(task, receive)
    if result is None:
        return
    if not out.started:
        if result.status != ExecutionStatus.SUCCEEDED:
            await out.json(*result_error(result, full=full))
            return
        # Succeeded without streaming tokens (a cached answer, only tool calls): one delta.
        await out.start(200, _SSE_HEADERS)
        content = "" if result.output or not result.tool_calls else None
        await out.body(
            _chunk(request, created, {"role": "assistant", "content": content}, None), more=True
        )
        if result.output:
            await out.body(_chunk(request, created, {"content": result.output}, None), more=True)
    if result.status == ExecutionStatus.SUCCEEDED:
        if result.tool_calls:
            await out.body(_tool_call_chunks(request, created, result.tool_calls), more=True)
        await out.body(_chunk(request, created, {}, result.finish_reason), more=True)
    else:
        # Part of an answer was already sent: end the stream with an error event.
        _, body, _ = result_error(result, full=full)
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
        await out.body(b"data: " + orjson.dumps(usage) + b"\n\n", more=True)
    await out.body(b"data: [DONE]\n\n")
