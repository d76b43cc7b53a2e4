"""Idempotency-Key on execute: replay, mismatch, concurrent duplicate (Stripe semantics), and
the final answer of a key whose first request's process died."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from asgiref.sync import async_to_sync, sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from agents.engine import engine_shutdown
from agents.executions.idempotency import (
    IN_PROGRESS_RETRY_AFTER_S,
    INTERRUPTED,
    INTERRUPTED_STATUS,
    Claim,
    MemoryIdempotency,
    RedisIdempotency,
    fingerprint,
    run_idempotently,
)
from agents.executions.processes import process_is_dead
from agents.models import WorkerProcess
from core.errors import ApplicationError, Conflict
from tests.agents.api.test_api import _setup

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def key() -> AsyncIterator[str]:
    keys = await sync_to_async(_setup)()
    yield keys["execute"]
    await engine_shutdown()


async def _post(key: str, body: dict[str, Any], idem: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return await AsyncClient().post(
        "/api/v1/agents/helper/execute",
        data=json.dumps(body),
        content_type="application/json",
        headers=headers,
    )


async def test_the_same_key_and_body_replays_without_a_second_execution(key: str) -> None:
    first = await _post(key, {"input": "once"}, "k-1")
    second = await _post(key, {"input": "once"}, "k-1")
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()

    assert len({first.json()["execution_id"], second.json()["execution_id"]}) == 1


async def test_the_same_key_with_another_body_is_422(key: str) -> None:
    await _post(key, {"input": "one"}, "k-2")
    response = await _post(key, {"input": "two"}, "k-2")
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "idempotency_mismatch"


async def test_without_the_header_every_request_executes(key: str) -> None:
    first = await _post(key, {"input": "x"}, None)
    second = await _post(key, {"input": "x"}, None)
    assert first.json()["execution_id"] != second.json()["execution_id"]


async def test_an_oversized_key_is_refused(key: str) -> None:
    response = await _post(key, {"input": "x"}, "k" * 300)
    assert response.status_code == 422


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield MemoryIdempotency()
        return
    url = request.getfixturevalue("redis_url")
    client = aioredis.Redis.from_url(url)
    yield RedisIdempotency(client, prefix=f"bwtest-{uuid.uuid4().hex[:8]}")
    await client.aclose()


async def test_a_concurrent_duplicate_is_in_progress_then_replays(store: Any) -> None:
    assert await store.claim("k", "fp") == Claim("started")
    assert await store.claim("k", "fp") == Claim("in_progress")
    assert await store.claim("k", "other") == Claim("mismatch")
    await store.finish("k", "fp", 200, {"ok": True})
    assert await store.claim("k", "fp") == Claim("replay", 200, {"ok": True})


async def test_a_failed_request_releases_its_claim(store: Any) -> None:
    assert (await store.claim("k", "fp")).outcome == "started"
    await store.release("k")
    assert (await store.claim("k", "fp")).outcome == "started"


async def test_only_one_of_many_racing_claims_starts(store: Any) -> None:
    outcomes = await asyncio.gather(*(store.claim("race", "fp") for _ in range(20)))
    assert [c.outcome for c in outcomes].count("started") == 1


def _redis_store(client: Any, prefix: str, owner: str, dead: set[str]) -> RedisIdempotency:
    async def owner_dead(name: str) -> bool:
        return name in dead

    return RedisIdempotency(client, prefix=prefix, owner=lambda: owner, owner_dead=owner_dead)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


INTERRUPTED_CLAIM = Claim("replay", INTERRUPTED_STATUS, INTERRUPTED)


async def test_once_the_claims_process_is_judged_dead_the_key_answers_interrupted(
    redis_client: Any,
) -> None:
    prefix, dead = f"bwtest-{uuid.uuid4().hex[:8]}", set[str]()
    first = _redis_store(redis_client, prefix, "process-a", dead)
    second = _redis_store(redis_client, prefix, "process-b", dead)
    assert await first.claim("k", "fp") == Claim("started")
    assert await second.claim("k", "fp") == Claim("in_progress")  # a is alive: wait
    dead.add("process-a")
    # Never run a second time under the key: the first may have reached the provider.
    assert await second.claim("k", "fp") == INTERRUPTED_CLAIM
    assert await second.claim("k", "fp") == INTERRUPTED_CLAIM  # and so on, for every resend
    assert await second.claim("k", "other") == Claim("mismatch")


async def test_a_dead_processs_claim_is_still_refused_to_another_request(
    redis_client: Any,
) -> None:
    prefix = f"bwtest-{uuid.uuid4().hex[:8]}"
    assert await _redis_store(redis_client, prefix, "a", set()).claim("k", "fp") == Claim("started")
    assert await _redis_store(redis_client, prefix, "b", {"a"}).claim("k", "other") == Claim(
        "mismatch"
    )


async def test_many_resends_after_the_process_died_all_get_the_same_answer(
    redis_client: Any,
) -> None:
    prefix = f"bwtest-{uuid.uuid4().hex[:8]}"
    assert (await _redis_store(redis_client, prefix, "a", set()).claim("k", "fp")).outcome == (
        "started"
    )
    resends = [_redis_store(redis_client, prefix, f"r{n}", {"a"}) for n in range(20)]
    outcomes = await asyncio.gather(*(store.claim("k", "fp") for store in resends))
    assert outcomes == [INTERRUPTED_CLAIM] * 20


async def _run_key_k(store: MemoryIdempotency, produce: Any) -> Any:
    """``POST /p`` with body ``{}`` under ``Idempotency-Key: k`` of API key 1."""
    return await run_idempotently(
        store=store, header="k", key_id=1, method="POST", path="/p", body=b"{}", produce=produce
    )


async def test_an_interrupted_key_is_a_500_naming_what_happened() -> None:
    store = MemoryIdempotency()
    scoped = f"1:{hashlib.sha256(b'k').hexdigest()}"
    print_ = fingerprint("POST", "/p", b"{}")
    await store.claim(scoped, print_)
    await store.finish(scoped, print_, INTERRUPTED_STATUS, INTERRUPTED)

    async def produce() -> Any:
        raise AssertionError("an interrupted request must not run again under its key")

    with pytest.raises(ApplicationError) as refused:
        await _run_key_k(store, produce)
    assert (refused.value.status, refused.value.type) == (500, "execution_interrupted")
    assert "send the request with a new Idempotency-Key" in refused.value.message


async def test_a_duplicate_while_the_first_runs_is_told_when_to_retry() -> None:
    store, gate = MemoryIdempotency(), asyncio.Event()

    async def slow() -> Any:
        await gate.wait()
        return {"ok": True}

    first = asyncio.create_task(_run_key_k(store, slow))
    await asyncio.sleep(0)
    with pytest.raises(Conflict) as refused:
        await _run_key_k(store, slow)
    assert (refused.value.status, refused.value.retry_after) == (409, IN_PROGRESS_RETRY_AFTER_S)
    gate.set()
    assert await first == {"ok": True}


def test_a_process_is_dead_only_once_judged_so() -> None:
    WorkerProcess.objects.create(id="alive", kind="serve", host="h", pid=1)
    WorkerProcess.objects.create(id="gone", kind="serve", host="h", pid=2, dead_at=timezone.now())
    is_dead = async_to_sync(process_is_dead)
    assert is_dead("gone")
    assert not is_dead("alive")
    assert not is_dead("never-registered")
