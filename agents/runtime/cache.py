"""The response cache: a successful answer, served again for the same question.

A cache is an optimisation, never a dependency: :class:`ResponseCache` implementations swallow
(and log and count) their own backend errors, so a broken cache costs a miss, never an
execution.

What is cached is decided by :func:`should_cache` (only clean, tool-free successes); under what
key by :func:`cache_key`; where by :class:`MemoryCache` (embedded mode: one bounded LRU per
process) or :class:`RedisCache` (distributed mode: one GET or one SET with EX per call).

The key (:func:`cache_key`, format version :data:`CACHE_KEY_VERSION`) is the SHA-256 of a
canonical JSON document holding exactly:

- ``agent``: the agent's name.
- ``models``: the model chain the executor chose for this execution, in order (primary, then
  fallbacks; the cheap-model rules change it, so a cheap-model answer never serves a request that
  would have gone to the standard model).
- ``messages``: the whole transcript sent to the model, in order: system prompt, session
  history and the request's messages. Per message: ``role``; ``content`` with every run of
  whitespace collapsed to one space and both ends stripped; ``name`` (tool/function messages);
  ``tool_calls`` as ``(name, arguments)`` pairs, arguments re-serialised canonically when they
  are JSON (else whitespace-collapsed like content).
- ``max_tokens``: the effective limit of the call (the request's, capped by the agent's).
- ``tools``: the agent's tools as ``(name, parameters)``, sorted by name.
- ``scope``: who may see the answer: ``"key:<api_key_id>"`` for an API key, ``"anon"`` for
  calls without one (:func:`cache_scope`). Answers are never shared across scopes.

Deliberately *not* part of the key: ``tool_call_id`` (opaque random ids that differ on every
call), tool descriptions, kinds, URLs and timeouts, the deployment and upstream model behind a
logical model name, prices, ``execution_id``, ``session_id`` (the history it selects is in the
messages), ``metadata`` (except through the model chain it may choose), and rate limits. Whitespace
inside content is normalised, so answers that differ only in indentation (code) share a key.
Changing anything about this list or the document's shape must bump :data:`CACHE_KEY_VERSION`,
which prefixes every key, so old entries are simply never read again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from agents.runtime.clock import Clock, SystemClock
from agents.runtime.redis_wire import RedisCommands
from agents.runtime.types import (
    ExecutionResult,
    ExecutionStatus,
    Message,
    ToolCall,
    ToolSpec,
    Usage,
)

log = logging.getLogger("breakwater.runtime.cache")

CACHE_KEY_VERSION = "v1"
_VALUE_VERSION = 1  # the stored value's format (RedisCache)


# --- what is cached -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CachedAnswer:
    """A successful answer as stored: enough to answer again, and to say what that saved."""

    output: str
    model: str  # the logical model that answered
    deployment: int  # the deployment that answered
    usage: Usage  # tokens of the original execution
    cost_usd: Decimal  # what the original execution cost (= what a hit saves)
    created_at: float  # epoch seconds when the original answer was produced

    @classmethod
    def from_result(cls, result: ExecutionResult) -> CachedAnswer:
        """The answer of ``result``, which must pass :func:`should_cache`."""
        if result.model is None or result.deployment is None:
            raise ValueError(f"execution {result.execution_id} has no answering model")
        return cls(
            output=result.output,
            model=result.model,
            deployment=result.deployment,
            usage=result.usage,
            cost_usd=result.cost_usd,
            created_at=result.finished_at,
        )

    def to_json(self) -> bytes:
        """Compact JSON; money as a decimal string so it round-trips exactly."""
        return json.dumps(
            {
                "v": _VALUE_VERSION,
                "output": self.output,
                "model": self.model,
                "deployment": self.deployment,
                "input_tokens": self.usage.input_tokens,
                "output_tokens": self.usage.output_tokens,
                "cost_usd": str(self.cost_usd),
                "created_at": self.created_at,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes | str) -> CachedAnswer:
        """Parse :meth:`to_json`'s output; ``ValueError`` for anything else."""
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("v") != _VALUE_VERSION:
                raise ValueError("not a cached answer of this version")
            output, model = data["output"], data["model"]
            deployment, cost = data["deployment"], data["cost_usd"]
            tokens_in, tokens_out = data["input_tokens"], data["output_tokens"]
            created_at = data["created_at"]
            if not (
                isinstance(output, str)
                and isinstance(model, str)
                and isinstance(cost, str)
                and all(
                    isinstance(n, int) and not isinstance(n, bool)
                    for n in (deployment, tokens_in, tokens_out)
                )
                and isinstance(created_at, int | float)
                and not isinstance(created_at, bool)
            ):
                raise ValueError("a field has the wrong type")
            cost_usd = Decimal(cost)
            if not cost_usd.is_finite():
                raise ValueError("cost_usd is not finite")
            return cls(
                output=output,
                model=model,
                deployment=deployment,
                usage=Usage(tokens_in, tokens_out),
                cost_usd=cost_usd,
                created_at=float(created_at),
            )
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            raise ValueError(f"malformed cached answer: {exc!r}") from exc


def should_cache(result: ExecutionResult) -> bool:
    """Whether ``result`` may be served again.

    Only a clean success: status ``succeeded`` (never degraded, failed or cancelled: a fallback
    message or an error must not outlive the incident that caused it), not itself a cache hit,
    no tool call during the execution (a tool's answer may have side effects or depend on the
    time or outside state), a non-blank output, and a known answering model and deployment.

    An answer from a fallback model *is* cached when the execution succeeded: it is a real
    answer, and the key holds the whole chain, not the model that happened to answer.
    """
    return (
        result.status == ExecutionStatus.SUCCEEDED
        and not result.cached
        and not any(step.kind == "tool" for step in result.steps)
        and bool(result.output.strip())
        and result.model is not None
        and result.deployment is not None
    )


# --- the key --------------------------------------------------------------------------------------


def cache_scope(api_key_id: int | None) -> str:
    """The scope an answer is shared within: one API key, or every caller without one."""
    return "anon" if api_key_id is None else f"key:{api_key_id}"


def cache_key(
    *,
    agent: str,
    model_chain: tuple[str, ...],
    messages: tuple[Message, ...],
    max_tokens: int,
    tools: tuple[ToolSpec, ...],
    scope: str,
) -> str:
    """``"<version>:<sha256 hex>"`` of exactly these inputs (see the module docstring).

    Raises ``ValueError`` for an empty scope (an answer must always belong to someone) and
    ``TypeError`` when a tool's parameters hold something JSON cannot express.
    """
    if not scope:
        raise ValueError("a cache key needs a scope (cache_scope(api_key_id))")
    document = {
        "agent": agent,
        "models": list(model_chain),
        "messages": [_message(message) for message in messages],
        "max_tokens": max_tokens,
        "tools": sorted(
            ([tool.name, _plain(tool.parameters)] for tool in tools), key=lambda t: str(t[0])
        ),
        "scope": scope,
    }
    canonical = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return f"{CACHE_KEY_VERSION}:{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _message(message: Message) -> dict[str, Any]:
    return {
        "role": message.role,
        "content": _collapse(message.content),
        "name": message.name,
        "tool_calls": [_tool_call(call) for call in message.tool_calls],
    }


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _tool_call(call: ToolCall) -> list[Any]:
    try:
        arguments: Any = _plain(json.loads(call.arguments, parse_constant=_no_constants))
    except (ValueError, TypeError, RecursionError):
        arguments = _collapse(call.arguments)
    return [call.name, arguments]


def _plain(value: Any) -> Any:
    """``value`` as plain JSON types (Mappings such as ``MappingProxyType`` become dicts)."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_plain(v) for v in value]
    raise TypeError(f"cannot put a {type(value).__name__} in a cache key")


# --- where it is cached ---------------------------------------------------------------------------


class ResponseCache(Protocol):
    """A best-effort store of answers. Neither method ever raises for a backend failure."""

    async def get(self, key: str) -> CachedAnswer | None:
        """The live answer under ``key``, or None (miss, expired, or the backend failed)."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> None:
        """Store ``answer`` for ``ttl_s`` seconds (nothing is stored when ``ttl_s <= 0``)."""
        ...

    def admission_key(self, key: str) -> str | None:
        """Where the state store's admission can read the answer under ``key`` in its own round
        trip (:attr:`AdmitRequest.cache_key`), or None: look it up with :meth:`get` first."""
        ...

    def answer(self, raw: bytes) -> CachedAnswer | None:
        """A value read through :meth:`admission_key`, or None (a miss, counted as an error
        like :meth:`get`'s) when it does not parse."""
        ...


class MemoryCache:
    """Embedded mode: a bounded LRU with per-entry expiry, shared by every thread of a process.

    Every operation is O(1) (an ``OrderedDict`` in recency order, oldest first) under one lock;
    nothing inside the lock awaits, so threads with their own event loops may share it. An
    expired entry is a miss and is removed when read; unread expired entries leave through the
    LRU end, so memory stays bounded by ``maxsize`` entries either way. Expiry uses the clock's
    monotonic time, so wall-clock jumps neither revive nor kill entries.
    """

    def __init__(self, maxsize: int = 10_000, *, clock: Clock | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        self.maxsize = maxsize
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()

    async def get(self, key: str) -> CachedAnswer | None:
        now = self._clock.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires_at, answer = entry
            if now >= expires_at:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return answer

    async def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        expires_at = self._clock.monotonic() + ttl_s
        with self._lock:
            self._entries[key] = (expires_at, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def admission_key(self, key: str) -> str | None:
        return None  # in-process: a lookup costs no round trip

    def answer(self, raw: bytes) -> CachedAnswer | None:
        try:
            return CachedAnswer.from_json(raw)
        except ValueError:
            return None

    def keys(self) -> tuple[str, ...]:
        """Keys from least to most recently used (expired ones included until removed)."""
        with self._lock:
            return tuple(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class RedisCache:
    """Distributed mode: ``<prefix>:cache:<key>`` holds :meth:`CachedAnswer.to_json`.

    One GET per :meth:`get`, one ``SET ... EX ttl`` per :meth:`put`, each bounded by
    ``timeout_s`` (a slow cache must not cost more than the call it saves). Failures of any kind
    (connection, timeout, a value that does not parse) are a miss: counted in :attr:`errors`,
    logged at most once per ``log_every_s``, never raised.

    With ``in_admission`` (the state store is a ``RedisState`` on the same Redis), the executor
    does not GET first: admission reads the key itself (:meth:`admission_key`), so a miss, the
    usual case, costs no round trip of its own.
    """

    def __init__(
        self,
        client: RedisCommands,
        *,
        prefix: str = "bw",
        timeout_s: float = 0.25,
        clock: Clock | None = None,
        log_every_s: float = 60.0,
        in_admission: bool = False,
    ) -> None:
        self._client = client
        self._in_admission = in_admission
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._clock = clock or SystemClock()
        self._log_every_s = log_every_s
        self._logged_at: float | None = None
        self.errors = 0

    def redis_key(self, key: str) -> str:
        return f"{self._prefix}:cache:{key}"

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            async with asyncio.timeout(self._timeout_s):
                raw: bytes | str | None = await self._client.execute_command(
                    "GET", self.redis_key(key)
                )
        except Exception as exc:  # any backend failure is a miss
            self._failed("get", exc)
            return None
        return None if raw is None else self.answer(raw if isinstance(raw, bytes) else raw.encode())

    def admission_key(self, key: str) -> str | None:
        return self.redis_key(key) if self._in_admission else None

    def answer(self, raw: bytes) -> CachedAnswer | None:
        try:
            return CachedAnswer.from_json(raw)
        except ValueError as exc:
            self._failed("decode", exc)
            return None

    async def put(self, key: str, answer: CachedAnswer, ttl_s: int) -> None:
        if ttl_s <= 0:
            return
        value = answer.to_json()
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.execute_command(
                    "SET", self.redis_key(key), value, "EX", int(ttl_s)
                )
        except Exception as exc:  # a lost write is a future miss, nothing more
            self._failed("put", exc)

    def _failed(self, operation: str, exc: BaseException) -> None:
        self.errors += 1
        now = self._clock.monotonic()
        if self._logged_at is not None and now - self._logged_at < self._log_every_s:
            return
        self._logged_at = now
        log.warning(
            "response cache %s failed (%d errors so far; treated as a miss): %s: %s",
            operation,
            self.errors,
            type(exc).__name__,
            exc,
        )
