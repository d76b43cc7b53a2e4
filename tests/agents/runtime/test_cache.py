"""The response cache: its key, both stores, and what may be cached.

The store contract runs on :class:`MemoryCache` and on :class:`RedisCache` (a fresh key prefix
per test; under ``BREAKWATER_REQUIRE_SERVICES=1`` a missing Redis fails the Redis half). Expiry
is tested on the memory store with a :class:`FakeClock`; on Redis, that the key carries its TTL.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agents.runtime.cache import (
    CACHE_KEY_VERSION,
    CachedAnswer,
    MemoryCache,
    RedisCache,
    ResponseCache,
    cache_key,
    cache_scope,
    should_cache,
)
from agents.runtime.clock import FakeClock
from agents.runtime.types import (
    ExecutionResult,
    ExecutionStatus,
    Message,
    Step,
    ToolCall,
    ToolSpec,
    Usage,
)

WEATHER = ToolSpec(
    name="weather",
    kind="python",
    description="Current weather",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    function="tools.weather",
)
CLOCK_TOOL = ToolSpec(
    name="clock", kind="python", description="Time", parameters={"type": "object"}
)
BASE: dict[str, Any] = {
    "agent": "support",
    "model_chain": ("gpt-4o-mini", "claude-3-5-haiku"),
    "messages": (
        Message("system", "You are helpful."),
        Message("user", "Where is my order?"),
    ),
    "max_tokens": 1024,
    "tools": (WEATHER,),
    "scope": "key:7",
}


def key(**changes: Any) -> str:
    return cache_key(**{**BASE, **changes})


def answer(output: str = "It ships today.", cost: str = "0.000123456789") -> CachedAnswer:
    return CachedAnswer(
        output=output,
        model="gpt-4o-mini",
        deployment=3,
        usage=Usage(120, 40),
        cost_usd=Decimal(cost),
        created_at=1_700_000_000.5,
    )


# --- the key --------------------------------------------------------------------------------------


def test_the_same_inputs_give_the_same_key() -> None:
    assert key() == key()
    assert key() == cache_key(**dict(BASE))


def test_a_key_is_the_version_tag_and_a_sha256_hex_digest() -> None:
    tag, digest = key().split(":")
    assert tag == CACHE_KEY_VERSION == "v1"
    assert len(digest) == 64
    assert int(digest, 16) >= 0


def test_the_key_format_is_pinned_so_changing_it_must_bump_the_version() -> None:
    # If this fails, the key's document changed: bump CACHE_KEY_VERSION, then update the value.
    assert key() == "v1:8c4d433ec9b2a565a0f7e1be16a57d43abe3aac21793ccabffa5ff7b0e166a13"


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"agent": "billing"}, id="agent"),
        pytest.param({"model_chain": ("gpt-4o-mini",)}, id="chain-shorter"),
        pytest.param({"model_chain": ("claude-3-5-haiku", "gpt-4o-mini")}, id="chain-order"),
        pytest.param({"model_chain": ("gpt-4o", "claude-3-5-haiku")}, id="chain-model"),
        pytest.param({"max_tokens": 1023}, id="max-tokens"),
        pytest.param({"scope": "key:8"}, id="other-key"),
        pytest.param({"scope": "anon"}, id="anonymous"),
        pytest.param(
            {"messages": (Message("system", "You are terse."), BASE["messages"][1])},
            id="system-prompt",
        ),
        pytest.param(
            {"messages": (BASE["messages"][0], Message("user", "Where is my order!"))},
            id="punctuation",
        ),
        pytest.param(
            {"messages": (BASE["messages"][0], Message("user", "where is my order?"))},
            id="letter-case",
        ),
        pytest.param(
            {"messages": (BASE["messages"][0], Message("assistant", "Where is my order?"))},
            id="role",
        ),
        pytest.param({"messages": BASE["messages"][1:]}, id="message-dropped"),
        pytest.param({"messages": tuple(reversed(BASE["messages"]))}, id="message-order"),
        pytest.param(
            {"messages": (*BASE["messages"], Message("user", ""))}, id="empty-message-added"
        ),
        pytest.param(
            {"messages": (Message("user", "a"), Message("user", "b"))}, id="split-differently"
        ),
        pytest.param({"tools": ()}, id="no-tools"),
        pytest.param({"tools": (WEATHER, CLOCK_TOOL)}, id="tool-added"),
        pytest.param({"tools": (replace(WEATHER, name="forecast"),)}, id="tool-name"),
        pytest.param(
            {"tools": (replace(WEATHER, parameters={"type": "object"}),)}, id="tool-parameters"
        ),
    ],
)
def test_any_change_to_a_keyed_input_changes_the_key(changes: dict[str, Any]) -> None:
    assert key(**changes) != key()


def test_messages_split_differently_never_collide() -> None:
    one = key(messages=(Message("user", "a"), Message("user", "b")))
    other = key(messages=(Message("user", "a b"),))
    assert one != other


def test_whitespace_only_differences_give_the_same_key() -> None:
    spaced = (
        Message("system", "  You are\thelpful.\n"),
        Message("user", "Where   is\n\nmy order?  "),
    )
    assert key(messages=spaced) == key()


def test_tool_call_arguments_are_keyed_by_their_json_value_not_their_spelling() -> None:
    def transcript(arguments: str, call_id: str) -> tuple[Message, ...]:
        return (
            Message("user", "Weather in Paris?"),
            Message("assistant", "", tool_calls=(ToolCall(call_id, "weather", arguments),)),
            Message("tool", "18C", tool_call_id=call_id, name="weather"),
        )

    compact = key(messages=transcript('{"city":"Paris","units":"c"}', "call_1"))
    spelled = key(messages=transcript('{ "units": "c",\n  "city": "Paris" }', "call_2"))
    other_city = key(messages=transcript('{"city":"Lyon","units":"c"}', "call_1"))
    not_json = key(messages=transcript("city = Paris", "call_1"))
    nan = key(messages=transcript('{"city": NaN}', "call_1"))  # not JSON: kept as text
    assert compact == spelled
    assert len({compact, other_city, not_json, nan}) == 4


def test_tool_order_descriptions_and_kinds_are_not_part_of_the_key() -> None:
    described = replace(WEATHER, description="Weather now", kind="webhook", url="http://x")
    assert key(tools=(CLOCK_TOOL, WEATHER)) == key(tools=(WEATHER, CLOCK_TOOL))
    assert key(tools=(described,)) == key()


def test_a_key_needs_a_scope() -> None:
    with pytest.raises(ValueError, match="scope"):
        key(scope="")


def test_each_api_key_is_its_own_scope_and_keyless_callers_share_one() -> None:
    assert (cache_scope(7), cache_scope(70), cache_scope(None)) == ("key:7", "key:70", "anon")


def test_tool_parameters_json_cannot_express_are_refused() -> None:
    with pytest.raises(TypeError, match="object"):
        key(tools=(replace(WEATHER, parameters={"default": object()}),))


# --- the stored value -----------------------------------------------------------------------------


def test_an_answer_round_trips_through_json_with_exact_money() -> None:
    original = answer(cost="0.000123456789")
    raw = original.to_json()
    assert b" " not in raw.replace(b"It ships today.", b"")  # compact
    assert json.loads(raw)["cost_usd"] == "0.000123456789"
    assert CachedAnswer.from_json(raw) == original
    assert CachedAnswer.from_json(raw.decode()) == original


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "output": "x"}',
        answer().to_json().replace(b'"deployment":3', b'"deployment":"3"'),
        answer().to_json().replace(b'"0.000123456789"', b'"lots"'),
        answer().to_json().replace(b'"0.000123456789"', b'"NaN"'),
        b"\xff\xfe",
    ],
)
def test_anything_else_is_refused_as_a_malformed_answer(raw: bytes) -> None:
    with pytest.raises(ValueError, match="malformed cached answer"):
        CachedAnswer.from_json(raw)


# --- both stores ------------------------------------------------------------------------------------


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis_client: aioredis.Redis) -> AsyncIterator[str]:
    prefix = f"bwtest:{uuid.uuid4().hex}"
    yield prefix
    keys = [k async for k in redis_client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await redis_client.delete(*keys)


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest) -> ResponseCache:
    if request.param == "memory":
        return MemoryCache(clock=FakeClock())
    client: aioredis.Redis = request.getfixturevalue("redis_client")
    return RedisCache(client, prefix=request.getfixturevalue("redis_prefix"))


async def test_a_stored_answer_is_found_under_its_key(cache: ResponseCache) -> None:
    await cache.put(key(), answer(), 60)
    assert await cache.get(key()) == answer()


async def test_an_unknown_key_is_a_miss(cache: ResponseCache) -> None:
    await cache.put(key(), answer(), 60)
    assert await cache.get(key(scope="key:8")) is None


async def test_a_second_put_replaces_the_first(cache: ResponseCache) -> None:
    await cache.put(key(), answer("first"), 60)
    await cache.put(key(), answer("second"), 60)
    got = await cache.get(key())
    assert got is not None
    assert got.output == "second"


@pytest.mark.parametrize("ttl_s", [0, -1])
async def test_a_ttl_of_zero_or_less_stores_nothing(cache: ResponseCache, ttl_s: int) -> None:
    await cache.put(key(), answer(), ttl_s)
    assert await cache.get(key()) is None


# --- the memory store ---------------------------------------------------------------------------------


async def test_the_least_recently_used_entry_is_evicted_at_maxsize() -> None:
    cache = MemoryCache(maxsize=3, clock=FakeClock())
    for name in "abc":
        await cache.put(name, answer(name), 60)
    assert cache.keys() == ("a", "b", "c")
    assert await cache.get("a") == answer("a")  # a is now the most recent
    assert cache.keys() == ("b", "c", "a")
    await cache.put("d", answer("d"), 60)
    assert cache.keys() == ("c", "a", "d")
    await cache.put("c", answer("c2"), 60)  # a put refreshes recency too
    await cache.put("e", answer("e"), 60)
    assert cache.keys() == ("d", "c", "e")
    assert await cache.get("a") is None
    assert await cache.get("b") is None
    assert len(cache) == 3


async def test_an_entry_expires_exactly_at_its_ttl_and_is_then_removed() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.put("short", answer("short"), 10)
    await cache.put("long", answer("long"), 60)
    clock.advance(9.999)
    assert await cache.get("short") == answer("short")
    clock.advance(0.001)
    assert await cache.get("short") is None
    assert cache.keys() == ("long",)
    clock.advance(49.999)
    assert await cache.get("long") == answer("long")
    clock.advance(0.001)
    assert await cache.get("long") is None
    assert len(cache) == 0


async def test_a_new_put_restarts_the_ttl() -> None:
    clock = FakeClock()
    cache = MemoryCache(clock=clock)
    await cache.put("k", answer(), 10)
    clock.advance(8)
    await cache.put("k", answer(), 10)
    clock.advance(8)
    assert await cache.get("k") == answer()


def test_a_memory_cache_needs_room_for_one_entry() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        MemoryCache(maxsize=0)


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def test_threads_sharing_a_memory_cache_see_only_their_own_keys_answers(
    fast_thread_switching: None,
) -> None:
    # Few keys, a tiny maxsize and entries expiring all the time keep every path busy at once
    # (hit, miss, expiry removal, replacement, eviction): without the lock, KeyErrors follow.
    clock = FakeClock()
    cache = MemoryCache(maxsize=8, clock=clock)
    errors: list[BaseException] = []
    wrong: list[tuple[str, str]] = []
    start = threading.Barrier(8)

    async def hammer(seed: int) -> None:
        rng = random.Random(seed)
        for step in range(15_000):
            name = f"k{rng.randrange(16)}"
            roll = rng.random()
            if roll < 0.45:
                await cache.put(name, answer(name), 1)
            elif roll < 0.9:
                got = await cache.get(name)
                if got is not None and got.output != name:
                    wrong.append((name, got.output))
            else:
                clock.advance(0.5)
            if step % 100 == 0 and len(cache) > 8:
                wrong.append(("size", str(len(cache))))

    def worker(seed: int) -> None:
        try:
            start.wait()
            asyncio.run(hammer(seed))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert wrong == []
    assert len(cache) <= 8


# --- the Redis store ----------------------------------------------------------------------------------


async def test_redis_keeps_a_compact_json_value_under_the_prefixed_key_with_its_ttl(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache = RedisCache(redis_client, prefix=redis_prefix)
    await cache.put(key(), answer(), 60)
    name = f"{redis_prefix}:cache:{key()}"
    assert cache.redis_key(key()) == name
    assert await redis_client.get(name) == answer().to_json()
    assert 55_000 < await redis_client.pttl(name) <= 60_000
    assert cache.errors == 0


async def test_a_corrupt_redis_value_is_a_counted_miss(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    cache = RedisCache(redis_client, prefix=redis_prefix)
    await redis_client.set(cache.redis_key(key()), b"{broken", ex=60)
    assert await cache.get(key()) is None
    assert cache.errors == 1


async def test_an_unreachable_redis_is_a_miss_and_a_put_that_does_not_raise() -> None:
    client = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cache = RedisCache(client, prefix="bwtest")
    try:
        assert await cache.get(key()) is None
        await cache.put(key(), answer(), 60)
        assert await cache.get(key()) is None
    finally:
        await client.aclose()
    assert cache.errors == 3


async def test_a_redis_that_never_answers_is_a_miss_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # hold the connection, never reply
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis(host="127.0.0.1", port=port, socket_timeout=30)
    cache = RedisCache(client, prefix="bwtest", timeout_s=0.05)
    try:
        # The outer bound only turns a regression into a failure instead of a hung suite.
        async with asyncio.timeout(10):
            assert await cache.get(key()) is None
            await cache.put(key(), answer(), 60)
    finally:
        await client.aclose()
        server.close()
    assert cache.errors == 2


async def test_backend_errors_are_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    client = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    cache = RedisCache(client, prefix="bwtest", clock=clock, log_every_s=60)
    try:
        with caplog.at_level("WARNING", logger="breakwater.runtime.cache"):
            await cache.get(key())
            await cache.get(key())
            clock.advance(60)
            await cache.get(key())
    finally:
        await client.aclose()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "response cache get failed (1 errors so far" in messages[0]
    assert "(3 errors so far" in messages[1]


# --- what may be cached -----------------------------------------------------------------------------


def result(**changes: Any) -> ExecutionResult:
    base = ExecutionResult(
        execution_id="e1",
        agent="support",
        status=ExecutionStatus.SUCCEEDED,
        output="It ships today.",
        model="gpt-4o-mini",
        deployment=3,
        attempts=1,
        fallback_used=False,
        fallback_reason=None,
        cached=False,
        usage=Usage(120, 40),
        cost_usd=Decimal("0.000042"),
        latency_ms=812.0,
        created_at=1_700_000_000.0,
        finished_at=1_700_000_000.8,
        steps=(Step("attempt", model="gpt-4o-mini", deployment=3, outcome="ok"),),
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("changes", "cacheable"),
    [
        pytest.param({}, True, id="clean-success"),
        pytest.param(
            {
                "attempts": 2,
                "fallback_used": True,
                "fallback_reason": "timeout",
                "steps": (
                    Step("attempt", model="gpt-4o-mini", outcome="Timeout"),
                    Step("fallback", model="claude-3-5-haiku", outcome="timeout"),
                    Step("attempt", model="claude-3-5-haiku", outcome="ok"),
                ),
            },
            True,
            id="success-after-retry-and-fallback",
        ),
        pytest.param({"status": ExecutionStatus.DEGRADED}, False, id="degraded"),
        pytest.param({"status": ExecutionStatus.FAILED, "output": "x"}, False, id="failed"),
        pytest.param({"status": ExecutionStatus.CANCELLED}, False, id="cancelled"),
        pytest.param({"status": ExecutionStatus.RUNNING}, False, id="running"),
        pytest.param({"cached": True}, False, id="already-a-hit"),
        pytest.param(
            {"steps": (Step("attempt", outcome="ok"), Step("tool", outcome="ok", detail="w"))},
            False,
            id="a-tool-ran",
        ),
        pytest.param({"output": ""}, False, id="empty-output"),
        pytest.param({"output": " \n\t"}, False, id="blank-output"),
        pytest.param({"model": None}, False, id="no-model"),
        pytest.param({"deployment": None}, False, id="no-deployment"),
    ],
)
def test_only_clean_tool_free_successes_are_cached(
    changes: dict[str, Any], cacheable: bool
) -> None:
    assert should_cache(result(**changes)) is cacheable


def test_a_cacheable_result_becomes_the_answer_it_stores() -> None:
    stored = CachedAnswer.from_result(result())
    assert stored == CachedAnswer(
        output="It ships today.",
        model="gpt-4o-mini",
        deployment=3,
        usage=Usage(120, 40),
        cost_usd=Decimal("0.000042"),
        created_at=1_700_000_000.8,
    )
    with pytest.raises(ValueError, match="no answering model"):
        CachedAnswer.from_result(result(model=None))
