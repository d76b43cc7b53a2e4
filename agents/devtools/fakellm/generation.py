"""The generation endpoints (``/v1/chat/completions``, ``/v1/messages``) and ``/v1/models``:
parse, decide the fault, answer in the caller's wire format (a body or an SSE stream)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents.devtools.fakellm import wire
from agents.devtools.fakellm.faults import Decision, FaultConfigError, Override, parse_override
from agents.devtools.fakellm.state import JSON, STATE, State, _json

SSE = "text/event-stream"
HANG_POLL_S = 0.05
MODELS = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.1-mini",
    "claude-3-5-haiku-20241022",
    "claude-3-5-sonnet-20241022",
    "claude-sonnet-4-20250514",
)


@dataclass(frozen=True, slots=True)
class _Format:
    name: wire.Format
    endpoint: str
    parse: Callable[[Any], wire.Prompt]
    id_header: str


_OPENAI = _Format("openai", "/v1/chat/completions", wire.parse_openai, "x-request-id")
_ANTHROPIC = _Format("anthropic", "/v1/messages", wire.parse_anthropic, "request-id")


def _error_response(
    fmt: _Format,
    status: int,
    rid: str,
    *,
    message: str | None = None,
    param: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    if fmt.name == "openai":
        body = wire.openai_error(status, message=message, param=param)
    else:
        body = wire.anthropic_error(status, rid=rid, message=message)
    headers = {fmt.id_header: f"req_{rid}"}
    if retry_after is not None and status in (429, 503):
        headers["Retry-After"] = wire.retry_after_header(retry_after)
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    reason = "Overloaded" if status == 529 else None  # not in http.HTTPStatus
    return web.Response(body=body, status=status, reason=reason, content_type=JSON, headers=headers)


def _quota_response(fmt: _Format, rid: str) -> web.Response:
    if fmt.name == "openai":
        return web.Response(
            body=wire.OPENAI_QUOTA,
            status=429,
            content_type=JSON,
            headers={fmt.id_header: f"req_{rid}"},
        )
    return _error_response(
        fmt, wire.ANTHROPIC_QUOTA_STATUS, rid, message=wire.ANTHROPIC_QUOTA_MESSAGE
    )


def _auth_failure(
    fmt: _Format, request: web.Request, api_key: str | None, rid: str
) -> web.Response | None:
    headers = request.headers
    if fmt.name == "anthropic" and "anthropic-version" not in headers:
        return _error_response(fmt, 400, rid, message="anthropic-version: header is required")
    if api_key is None:
        return None
    if fmt.name == "openai":
        if headers.get("Authorization") != f"Bearer {api_key}":
            return _error_response(fmt, 401, rid)
    elif headers.get("x-api-key") != api_key:
        return _error_response(fmt, 401, rid)
    return None


async def _handle_generation(request: web.Request, fmt: _Format) -> web.StreamResponse:
    state = request.app[STATE]
    stats = state.stats
    counters = stats.begin(fmt.endpoint)
    rid = state.next_id()
    try:
        raw = await request.read()
        refused = _auth_failure(fmt, request, state.faults.config.api_key, rid)
        if refused is not None:
            stats.record(counters, "refused", refused.status)
            return refused
        override: Override | None = None
        header = request.headers.get("x-fakellm-fault")
        try:
            if header:
                override = parse_override(header)
            body = json.loads(raw)
            prompt = fmt.parse(body)
        except FaultConfigError as exc:
            stats.record(counters, "invalid_request", 400)
            return _error_response(fmt, 400, rid, message=str(exc), param=exc.field)
        except wire.BadRequest as exc:
            stats.record(counters, "invalid_request", 400)
            return _error_response(fmt, 400, rid, message=exc.message, param=exc.param)
        except ValueError:
            stats.record(counters, "invalid_request", 400)
            return _error_response(fmt, 400, rid, message="the request body is not valid JSON")

        decision = state.faults.decide(stream=prompt.stream, override=override)
        if prompt.stream:
            counters.streams += 1
        outcome = decision.outcome
        status = (
            wire.ANTHROPIC_QUOTA_STATUS
            if outcome == "quota" and fmt.name == "anthropic"
            else decision.status
        )
        stats.record(counters, outcome, None if outcome == "hang" else status)
        state.requests.append(
            {
                "id": rid,
                "endpoint": fmt.endpoint,
                "at": time.time(),
                "headers": dict(request.headers),
                "body": body,
                "outcome": outcome,
                "status": status,
            }
        )

        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        if outcome == "hang":
            return await _hang(request, state)
        if outcome == "error":
            return _error_response(fmt, decision.status, rid, retry_after=decision.retry_after)
        if outcome == "quota":
            return _quota_response(fmt, rid)

        reply = wire.build_reply(
            prompt, output_tokens=decision.output_tokens, tool_call=decision.tool_call
        )
        if prompt.stream:
            return await _stream(request, fmt, prompt, reply, decision, rid)
        if fmt.name == "openai":
            body = wire.openai_body(prompt, reply, rid=rid, created=int(time.time()))
        else:
            body = wire.anthropic_body(prompt, reply, rid=rid)
        headers = {fmt.id_header: f"req_{rid}"}
        if outcome == "malformed":
            if decision.malformed_mode == "invalid_utf8":
                body = wire.corrupt_utf8(body, reply.chunks[0] if reply.chunks else "")
            else:
                body = body[: len(body) // 2]
            return web.Response(body=body, content_type=JSON, headers=headers)
        if outcome == "cut":
            return await _cut_body(request, body, headers)
        return web.Response(body=body, content_type=JSON, headers=headers)
    finally:
        stats.in_flight -= 1


async def _hang(request: web.Request, state: State) -> web.StreamResponse:
    """Answer nothing until the client disconnects or the server shuts down."""
    while not state.shutdown.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.shutdown.wait(), HANG_POLL_S)
    _drop_connection(request)
    return web.Response(status=499)


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then closes: no terminal chunk follows


async def _cut_body(
    request: web.Request, body: bytes, headers: Mapping[str, str]
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Content-Type": JSON})
    response.content_length = len(body)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        await response.write(body[: len(body) // 2])
    _drop_connection(request)
    return response


async def _stream(
    request: web.Request,
    fmt: _Format,
    prompt: wire.Prompt,
    reply: wire.Reply,
    decision: Decision,
    rid: str,
) -> web.StreamResponse:
    if fmt.name == "openai":
        events = wire.openai_stream(prompt, reply, rid=rid, created=int(time.time()))
    else:
        events = wire.anthropic_stream(prompt, reply, rid=rid)
    response = web.StreamResponse(
        headers={
            "Content-Type": SSE,
            "Cache-Control": "no-cache",
            fmt.id_header: f"req_{rid}",
        }
    )
    await response.prepare(request)
    deltas = events.deltas
    terminal = events.terminal
    if decision.outcome == "cut":
        count = decision.cut_after if decision.cut_after is not None else max(1, len(deltas) // 2)
        deltas = deltas[: min(count, len(deltas))]
        terminal = []
    elif decision.outcome == "malformed" and decision.malformed_mode == "invalid_utf8":
        # Every event sent, the usage included; the first content delta's text carries bytes
        # that are not UTF-8.
        if deltas:
            deltas = [wire.corrupt_utf8(deltas[0], reply.chunks[0]), *deltas[1:]]
    elif decision.outcome == "malformed":
        # A delta whose JSON is cut off, where a content delta belongs; the stream then ends
        # normally, so only a client that parses every event notices.
        first = deltas[0] if deltas else events.preamble[0]
        deltas = [first[: len(first) // 2] + b"\n\n"]

    write = response.write
    try:
        if decision.first_token_s <= 0 and decision.token_s <= 0:
            await write(b"".join((*events.preamble, *deltas, *terminal)))
        else:
            await write(b"".join(events.preamble))
            for index, delta in enumerate(deltas):
                pause = decision.first_token_s if index == 0 else decision.token_s
                if pause > 0:
                    await asyncio.sleep(pause)
                await write(delta)
            if terminal:
                await write(b"".join(terminal))
        if decision.outcome == "cut":
            _drop_connection(request)
            return response
        await response.write_eof()
    except ConnectionError:
        pass  # the client went away mid-stream (its timeout): nothing to report
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, _OPENAI)


async def messages(request: web.Request) -> web.StreamResponse:
    return await _handle_generation(request, _ANTHROPIC)


async def models(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    counters = state.stats.begin("/v1/models")
    try:
        state.stats.record(counters, "ok", 200)
        if "anthropic-version" in request.headers:
            data = [
                {
                    "type": "model",
                    "id": name,
                    "display_name": name,
                    "created_at": "2024-10-22T00:00:00Z",
                }
                for name in MODELS
                if name.startswith("claude")
            ]
            return _json(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"],
                    "last_id": data[-1]["id"],
                }
            )
        return _json(
            {
                "object": "list",
                "data": [
                    {"id": name, "object": "model", "created": 1721172741, "owned_by": "fakellm"}
                    for name in MODELS
                ],
            }
        )
    finally:
        state.stats.in_flight -= 1
