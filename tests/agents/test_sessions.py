from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agents.models import Execution, ExecutionStatus
from agents.runtime.types import Message
from agents.sessions import MAX_KEPT, LocalSessions, RedisSessions


def _record(session_id: str, question: str, answer: str, status: str = "succeeded") -> None:
    Execution.objects.create(
        agent_name="support",
        status=status,
        session_id=session_id,
        input=[{"role": "user", "content": question}],
        output=answer,
    )


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.mark.django_db(transaction=True)
async def test_a_new_process_rebuilds_a_session_from_the_execution_records() -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(_record)("s1", "hi", "hello")
    await sync_to_async(_record)("s1", "and?", "that's all")
    await sync_to_async(_record)("s1", "ignored", "", status=ExecutionStatus.FAILED)
    await sync_to_async(_record)("other", "not mine", "no")
    history = await LocalSessions().history("support", "s1")
    assert history == (
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "and?"),
        Message("assistant", "that's all"),
    )


@pytest.mark.django_db(transaction=True)
async def test_the_local_cache_evicts_the_least_recently_used_session() -> None:
    sessions = LocalSessions(max_sessions=2)
    for sid in ("a", "b", "c"):
        await sessions.append("support", sid, (Message("user", sid),))
    assert ("support", "a") not in sessions._cache
    assert await sessions.history("support", "c") == (Message("user", "c"),)


@pytest.mark.django_db(transaction=True)
async def test_redis_sessions_keep_a_bounded_expiring_list(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"bwtest-{uuid.uuid4().hex[:8]}"
    sessions = RedisSessions(redis_client, prefix=prefix)
    many = tuple(Message("user", str(i)) for i in range(MAX_KEPT + 5))
    await sessions.append("support", "s", many)
    history = await sessions.history("support", "s")
    assert history == many[-MAX_KEPT:]
    ttl = await redis_client.ttl(f"{prefix}:session:support:s")
    assert 0 < ttl <= 7 * 86_400
    await redis_client.delete(f"{prefix}:session:support:s")
