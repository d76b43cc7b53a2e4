"""Conversation memory for ``session_id`` (the runtime's ``SessionStore`` port).

The durable copy of a conversation is the execution records themselves (input + output of each
succeeded execution with that ``session_id``), so nothing is stored twice. The hot copy is a
bounded cache: an in-process LRU in embedded mode, a Redis list per session (one round trip,
trimmed, expiring) in distributed mode. A miss (a restart, an evicted or expired session) is
filled once from the execution records. The executor windows what it gets by message count and
token estimate.

A conversation belongs to the API key that had it: every store is keyed by (API key, agent,
session), so another key that sends the same ``session_id`` starts an empty conversation of its
own instead of reading (and sending upstream) someone else's. Executions made without a key (the
console, internal callers) form one scope of their own, which no key can read.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Any

from asgiref.sync import sync_to_async

from agents.models import Execution, ExecutionStatus
from agents.runtime.types import Message
from core.redis import unavailable_on_redis_errors

MAX_KEPT = 100  # messages kept per session (agents window further)
TTL_S = 7 * 86_400


def _from_records(
    agent: str, session_id: str, api_key_id: int | None, limit: int = MAX_KEPT
) -> tuple[Message, ...]:
    # ``api_key=None`` matches only keyless executions (``IS NULL``): that scope is never mixed
    # with a key's.
    rows = list(
        Execution.objects.filter(
            agent_name=agent,
            session_id=session_id,
            api_key=api_key_id,
            status=ExecutionStatus.SUCCEEDED,
        )
        .order_by("-created_at")
        .values_list("input", "output")[: max(1, limit // 2)]
    )
    messages: list[Message] = []
    for given, output in reversed(rows):
        for item in given or ():
            if isinstance(item, dict) and item.get("role") in ("user", "assistant"):
                messages.append(Message(item["role"], str(item.get("content", ""))))
        messages.append(Message("assistant", output))
    return tuple(messages[-limit:])


_Scope = tuple[int | None, str, str]  # (API key id or None, agent, session id)


class LocalSessions:
    """Embedded mode: an LRU of recent sessions in this process."""

    def __init__(self, *, max_sessions: int = 10_000) -> None:
        self._max = max_sessions
        self._cache: OrderedDict[_Scope, deque[Message]] = OrderedDict()

    async def history(
        self, agent: str, session_id: str, *, api_key_id: int | None
    ) -> tuple[Message, ...]:
        key = (api_key_id, agent, session_id)
        cached = self._cache.get(key)
        if cached is None:
            loaded = await sync_to_async(_from_records, thread_sensitive=False)(
                agent, session_id, api_key_id
            )
            cached = self._store(key, deque(loaded, maxlen=MAX_KEPT))
        self._cache.move_to_end(key)
        return tuple(cached)

    async def append(
        self,
        agent: str,
        session_id: str,
        messages: tuple[Message, ...],
        *,
        api_key_id: int | None,
    ) -> None:
        key = (api_key_id, agent, session_id)
        cached = self._cache.get(key)
        if cached is None:
            cached = self._store(key, deque(maxlen=MAX_KEPT))
        cached.extend(messages)
        self._cache.move_to_end(key)

    def _store(self, key: _Scope, value: deque[Message]) -> deque[Message]:
        self._cache[key] = value
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return value


def _encode(message: Message) -> str:
    return json.dumps({"role": message.role, "content": message.content})


def _decode(raw: Any) -> Message:
    data = json.loads(raw)
    return Message(data["role"], data["content"])


class RedisSessions:
    """Distributed mode: ``bw:session:<scope>:<agent>:<id>`` lists, trimmed and expiring.

    ``<scope>`` is ``k<API key id>``, or ``internal`` for executions made without a key. Agent
    names are slugs (no ``:``), so the session id (which may hold ``:``) comes last, unambiguous.
    """

    def __init__(self, client: Any, *, prefix: str = "bw") -> None:
        self._redis = client
        self._prefix = prefix

    def key(self, agent: str, session_id: str, api_key_id: int | None) -> str:
        scope = "internal" if api_key_id is None else f"k{api_key_id}"
        return f"{self._prefix}:session:{scope}:{agent}:{session_id}"

    async def history(
        self, agent: str, session_id: str, *, api_key_id: int | None
    ) -> tuple[Message, ...]:
        key = self.key(agent, session_id, api_key_id)
        with unavailable_on_redis_errors():
            raw = await self._redis.lrange(key, 0, -1)
        if raw:
            return tuple(_decode(item) for item in raw)
        loaded = await sync_to_async(_from_records, thread_sensitive=False)(
            agent, session_id, api_key_id
        )
        if loaded:
            await self._push(key, loaded)
        return loaded

    async def append(
        self,
        agent: str,
        session_id: str,
        messages: tuple[Message, ...],
        *,
        api_key_id: int | None,
    ) -> None:
        await self._push(self.key(agent, session_id, api_key_id), messages)

    async def _push(self, key: str, messages: tuple[Message, ...]) -> None:
        with unavailable_on_redis_errors():
            await self._push_now(key, messages)

    async def _push_now(self, key: str, messages: tuple[Message, ...]) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key, *(_encode(m) for m in messages))
            pipe.ltrim(key, -MAX_KEPT, -1)
            pipe.expire(key, TTL_S)
            await pipe.execute()
