"""The provider port and what the HTTP providers share."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import aiohttp
import orjson
from aiohttp.abc import AbstractResolver

from agents.runtime.errors import (
    MalformedReply,
    ProviderError,
    ProviderFailure,
    Timeout,
    classify_http,
)
from agents.runtime.types import ChatRequest, ChatResponse, Deployment, Message, Usage

OnToken = Callable[[str], Awaitable[None]]


class ProviderClient(Protocol):
    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        """One upstream call. Raises a :class:`ProviderFailure` subclass on any failure.

        ``timeout_s`` bounds the whole call; with ``on_token`` the call streams and each text
        delta is handed over as it arrives.
        """
        ...


def estimate_tokens(text: str) -> int:
    """A cheap, deterministic token estimate (~4 characters a token) for prompts and for
    streams that ended before the provider reported usage. Never 0 for non-empty text."""
    return (len(text) + 3) // 4


def estimate_messages(messages: tuple[Message, ...]) -> int:
    return sum(estimate_tokens(m.content) + 4 for m in messages)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds or seconds < 0:  # NaN or in the past
        return 0.0
    return min(seconds, 3600.0)


async def raise_for_status(response: aiohttp.ClientResponse) -> None:
    """Turn an upstream error response into the right :class:`ProviderFailure`."""
    if response.status < 400:
        return
    raw = await response.read()
    message, code, error_type = f"HTTP {response.status}", None, None
    try:
        body: Any = json.loads(raw)
        error = body.get("error", body) if isinstance(body, dict) else {}
        if isinstance(error, dict):
            message = str(error.get("message") or message)[:500]
            code = error.get("code") if isinstance(error.get("code"), str) else None
            error_type = error.get("type") if isinstance(error.get("type"), str) else None
    except (ValueError, AttributeError):
        message = raw[:200].decode("utf-8", "replace") or message
    cls = classify_http(response.status, code=code, error_type=error_type, message=message)
    raise cls(
        f"{response.status} {message}",
        status=response.status,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


class HttpSession:
    """One pooled aiohttp session per event loop (keep-alive, no per-call set-up)."""

    def __init__(
        self,
        *,
        limit: int = 512,
        connect_timeout_s: float = 5.0,
        resolver: Callable[[], AbstractResolver] | None = None,
    ) -> None:
        self._limit = limit
        self._connect_timeout_s = connect_timeout_s
        self._resolver = resolver  # built per loop, as aiohttp's own resolvers must be
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def get(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._sessions.get(id(loop))
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
                resolver=self._resolver() if self._resolver is not None else None,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=json.dumps,
                timeout=aiohttp.ClientTimeout(sock_connect=self._connect_timeout_s),
                auto_decompress=True,
            )
            self._sessions[id(loop)] = session
        return session

    async def close(self) -> None:
        loop_id = id(asyncio.get_running_loop())
        session = self._sessions.pop(loop_id, None)
        if session is not None:
            await session.close()


def timeout_failure(phase: str, timeout_s: float) -> Timeout:
    return Timeout(f"no answer within {timeout_s:.3f}s ({phase})", phase=phase)


def transport_failure(exc: BaseException) -> ProviderFailure:
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return Timeout(f"timeout: {exc}", phase="connect")
    return ProviderError(f"transport error: {type(exc).__name__}: {exc}")


def token_count(value: Any) -> int | None:
    """A token count as a provider reports it: a non-negative integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


UsageOf = Callable[[Any], Usage | None]

# Where a usage object starts in a body that does not parse as a whole (cut short, or broken).
_USAGE_KEY = re.compile(r'"usage"\s*:\s*(?=\{)')
_LENIENT = json.JSONDecoder()  # the stdlib parser: lone surrogates pass, trailing text ignored


def salvaged_usage(raw: bytes, usage_of: UsageOf) -> tuple[Usage | None, str]:
    """The usage a broken body still reports, and the body as text (invalid bytes replaced).

    Invalid UTF-8 and lone surrogates break the strict parser but not the document: parsed
    leniently, it still says what the call cost. A cut body may still hold its usage object.
    The salvaged document is only read for its usage, never answered: its text is broken.
    """
    text = raw.decode("utf-8", "replace")
    try:
        data: Any = _LENIENT.decode(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        return usage_of(data), text
    for match in _USAGE_KEY.finditer(text):
        try:
            found, _ = _LENIENT.raw_decode(text, match.end())
        except ValueError:
            continue  # cut inside the usage object itself
        usage = usage_of({"usage": found})
        if usage is not None:
            return usage, text
    return None, text


def malformed(
    message: str, usage: Usage | None, request: ChatRequest, received: str
) -> ProviderError:
    """A 200 reply that cannot be answered. With the usage it reported: a
    :class:`MalformedReply` charged for that usage. Without: a :class:`ProviderError` charged an
    estimate, the prompt plus what arrived (as a cut stream is), never a free call."""
    if usage is not None:
        return MalformedReply(
            message, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
        )
    return ProviderError(
        message,
        input_tokens=estimate_messages(request.messages),
        output_tokens=estimate_tokens(received),
    )


def malformed_stream(broken: str, usage: Usage | None) -> ProviderError:
    """A stream that carried a broken event: a :class:`MalformedReply` when it still ended with
    its usage; else a :class:`ProviderError` that :func:`post_chat` charges the estimate of."""
    message = f"malformed stream: {broken}"
    if usage is None:
        return ProviderError(message)
    return MalformedReply(
        message, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
    )


def decode_body(
    raw: bytes,
    request: ChatRequest,
    parse: Callable[[Any, ChatRequest], ChatResponse],
    usage_of: UsageOf,
) -> ChatResponse:
    """A non-streamed reply: strict JSON (orjson refuses invalid UTF-8 and lone surrogates),
    then the provider's own parse; a failure of either is :func:`malformed`, charged."""
    try:
        data = orjson.loads(raw)
    except ValueError:
        usage, text = salvaged_usage(raw, usage_of)
        raise malformed(
            "malformed response: body is not valid JSON in UTF-8", usage, request, text
        ) from None
    try:
        return parse(data, request)
    except ProviderError as failure:  # the wrong shape (parse raises nothing else)
        usage = usage_of(data) if isinstance(data, dict) else None
        raise malformed(failure.message, usage, request, raw.decode("utf-8", "replace")) from None


class StreamState(Protocol):
    def estimated(self, request: ChatRequest) -> tuple[int, int]:
        """(input, output) tokens so far: reported where the stream said, else estimated."""
        ...


_JSON = {"Content-Type": "application/json"}

S = TypeVar("S", bound=StreamState)


def _charge(failure: ProviderFailure, state: StreamState, request: ChatRequest) -> ProviderFailure:
    if not failure.input_tokens and not failure.output_tokens:  # not told: estimate
        failure.input_tokens, failure.output_tokens = state.estimated(request)
    return failure


async def post_chat(
    http: HttpSession,
    *,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    request: ChatRequest,
    timeout_s: float,
    on_token: OnToken | None,
    parse: Callable[[Any, ChatRequest], ChatResponse],
    usage_of: UsageOf,
    state: S,
    read_stream: Callable[[aiohttp.ClientResponse, S, OnToken], Awaitable[None]],
    finish_stream: Callable[[S, ChatRequest], ChatResponse],
) -> ChatResponse:
    """POST one chat call and read it plain or streamed, mapping every failure to a typed
    :class:`ProviderFailure`. A streamed call that fails still carries the tokens it used."""
    try:
        async with asyncio.timeout(timeout_s):
            async with http.get().post(
                url, data=orjson.dumps(body), headers={**headers, **_JSON}
            ) as response:
                await raise_for_status(response)
                if on_token is None:
                    return decode_body(await response.read(), request, parse, usage_of)
                await read_stream(response, state, on_token)
    except ProviderFailure as failure:
        raise (_charge(failure, state, request) if on_token is not None else failure) from None
    except aiohttp.ServerTimeoutError as exc:  # a TimeoutError too: connect/read phase first
        raise _charge(transport_failure(exc), state, request) from None
    except TimeoutError:
        raise _charge(timeout_failure("total", timeout_s), state, request) from None
    except (aiohttp.ClientError, OSError) as exc:
        raise _charge(transport_failure(exc), state, request) from None
    try:
        return finish_stream(state, request)
    except ProviderFailure as failure:
        raise _charge(failure, state, request) from None
