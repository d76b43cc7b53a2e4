from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.db import connections

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.devtools.fakellm import FakeLLM, FaultConfig
from agents.engine import engine_shutdown, get_engine
from agents.executions.sessions import MAX_KEPT, LocalSessions, RedisSessions
from agents.models import ApiKey, Execution, ExecutionStatus
from agents.runtime.ports import SessionStore
from agents.runtime.types import Message
from tests.asgi_client import asgi_request


def _record(
    session_id: str,
    question: str,
    answer: str,
    status: str = "succeeded",
    api_key: ApiKey | None = None,
) -> None:
    Execution.objects.create(
        agent_name="support",
        api_key=api_key,
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
    await sync_to_async(_record)("s1", "hi", "hello")
    await sync_to_async(_record)("s1", "and?", "that's all")
    await sync_to_async(_record)("s1", "ignored", "", status=ExecutionStatus.FAILED)
    await sync_to_async(_record)("other", "not mine", "no")
    history = await LocalSessions().history("support", "s1", api_key_id=None)
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
        await sessions.append("support", sid, (Message("user", sid),), api_key_id=1)
    assert (1, "support", "a") not in sessions._cache
    assert await sessions.history("support", "c", api_key_id=1) == (Message("user", "c"),)


@pytest.mark.django_db(transaction=True)
async def test_redis_sessions_keep_a_bounded_expiring_list(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"bwtest-{uuid.uuid4().hex[:8]}"
    sessions = RedisSessions(redis_client, prefix=prefix)
    many = tuple(Message("user", str(i)) for i in range(MAX_KEPT + 5))
    await sessions.append("support", "s", many, api_key_id=7)
    history = await sessions.history("support", "s", api_key_id=7)
    assert history == many[-MAX_KEPT:]
    ttl = await redis_client.ttl(f"{prefix}:session:k7:support:s")
    assert 0 < ttl <= 7 * 86_400
    await redis_client.delete(f"{prefix}:session:k7:support:s")


# --- sessions belong to an API key ------------------------------------------------------------


def _two_keys() -> tuple[ApiKey, ApiKey]:
    return (
        api_key_create(name="alice", scopes=["execute"]).api_key,
        api_key_create(name="mallory", scopes=["execute"]).api_key,
    )


@pytest.mark.django_db(transaction=True)
async def test_the_records_fill_a_session_only_with_that_keys_executions() -> None:
    alice, mallory = await sync_to_async(_two_keys)()
    await sync_to_async(_record)("s1", "alice's plan", "noted", api_key=alice)
    await sync_to_async(_record)("s1", "console question", "console answer")
    sessions = LocalSessions()
    assert await sessions.history("support", "s1", api_key_id=alice.pk) == (
        Message("user", "alice's plan"),
        Message("assistant", "noted"),
    )
    assert await sessions.history("support", "s1", api_key_id=mallory.pk) == ()
    # Keyless executions (console, internal callers) are a scope of their own.
    assert await sessions.history("support", "s1", api_key_id=None) == (
        Message("user", "console question"),
        Message("assistant", "console answer"),
    )


@pytest.mark.django_db(transaction=True)
async def test_another_key_reusing_a_session_id_sees_nothing_of_it_in_the_local_store() -> None:
    sessions = LocalSessions()
    await sessions.append("support", "s", (Message("user", "secret"),), api_key_id=1)
    assert await sessions.history("support", "s", api_key_id=2) == ()
    assert await sessions.history("support", "s", api_key_id=None) == ()
    assert await sessions.history("support", "s", api_key_id=1) == (Message("user", "secret"),)


@pytest.mark.django_db(transaction=True)
async def test_another_key_reusing_a_session_id_sees_nothing_of_it_in_redis(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"bwtest-{uuid.uuid4().hex[:8]}"
    sessions = RedisSessions(redis_client, prefix=prefix)
    try:
        await sessions.append("support", "s:1", (Message("user", "secret"),), api_key_id=1)
        assert await sessions.history("support", "s:1", api_key_id=2) == ()
        assert await sessions.history("support", "s:1", api_key_id=None) == ()
        assert await sessions.history("support", "s:1", api_key_id=1) == (
            Message("user", "secret"),
        )
        assert await redis_client.exists(f"{prefix}:session:k1:support:s:1") == 1
    finally:
        keys = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await redis_client.delete(*keys)


# Over HTTP: two keys send the same session_id through the execute door to a real upstream
# (fakellm, which keeps what it receives); the second key's upstream request must carry none of
# the first key's conversation, with the embedded store, the Redis store, and after a restart
# (a fresh store, filled from the execution records).

DOC = """
providers:
  - {{name: fake, kind: openai, base_url: "{fake}/v1"}}
models:
  - {{name: m, provider: fake, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
agents:
  - {{name: support, model: m, max_tokens: 64}}
"""
SECRET = "my account number is 4242"


def _setup(fake_url: str) -> dict[str, str]:
    config_apply(document=config_parse(DOC.format(fake=fake_url)))
    return {
        "alice": api_key_create(name="alice", scopes=["execute"]).plaintext,
        "mallory": api_key_create(name="mallory", scopes=["execute"]).plaintext,
    }


async def _execute(key: str, text: str) -> dict[str, Any]:
    from console.asgi import application

    body = json.dumps({"input": text, "session_id": "shared-1"}).encode()
    answer = await asgi_request(
        application,
        "POST",
        "/api/v1/agents/support/execute",
        headers=[("authorization", f"Bearer {key}"), ("content-type", "application/json")],
        body=body,
    )
    assert answer.status_code == 200, answer.content
    result: dict[str, Any] = answer.json()
    assert result["status"] == "succeeded", result
    return result


def _upstream_text(fake: FakeLLM) -> str:
    """Everything the last upstream request carried, as text."""
    return json.dumps(fake.state.requests[-1]["body"]["messages"])


@pytest.fixture(params=["embedded", "redis"])
async def new_store(
    request: pytest.FixtureRequest,
) -> AsyncIterator[Callable[[], SessionStore]]:
    """Makes a fresh session store of the kind under test (a fresh one = a restarted process)."""
    if request.param == "embedded":
        yield LocalSessions
        return
    client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    prefixes: list[str] = []

    def fresh() -> SessionStore:
        # A new prefix: a Redis that has none of the conversations (evicted, expired, restarted).
        prefixes.append(f"bwtest-{uuid.uuid4().hex[:8]}")
        return RedisSessions(client, prefix=prefixes[-1])

    yield fresh
    for prefix in prefixes:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    await client.aclose()


@pytest.mark.django_db(transaction=True)
async def test_a_second_key_with_the_same_session_id_sends_none_of_the_first_keys_messages(
    new_store: Callable[[], SessionStore],
) -> None:
    from tests.agents.api.test_queued import drain_journal

    async with FakeLLM(FaultConfig(output_tokens=4)) as fake:
        keys = await sync_to_async(_setup)(fake.url)
        engine = get_engine()
        await sync_to_async(engine.config.reload)()
        try:
            engine.executor._sessions = new_store()
            await _execute(keys["alice"], SECRET)
            await _execute(keys["alice"], "and my next question")
            assert SECRET in _upstream_text(fake)  # a session does carry its own history

            await _execute(keys["mallory"], "what did we talk about?")
            assert SECRET not in _upstream_text(fake)
            assert "next question" not in _upstream_text(fake)

            # A restart: the next store knows nothing and fills sessions from the records.
            await drain_journal()
            engine.executor._sessions = new_store()
            await _execute(keys["mallory"], "and now?")
            sent = _upstream_text(fake)
            assert SECRET not in sent
            assert "what did we talk about?" in sent  # mallory's own turn came back
            await _execute(keys["alice"], "still there?")
            assert SECRET in _upstream_text(fake)
        finally:
            await engine_shutdown()
            await drain_journal()
            await sync_to_async(connections.close_all)()
