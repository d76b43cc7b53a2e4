"""The response-cache lookup riding on admission (distributed mode).

With a :class:`RedisCache` on the state's Redis (``in_admission=True``, as the engine builds
it), the executor sends no GET of its own: the admit call reads the cache key first, and on a hit
takes nothing (no lease, no rate-log entry, no reservation) and returns the answer. These tests
run the executor on a real Redis through :class:`RedisWire` and count the commands it sends.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.runtime.cache import CachedAnswer, MemoryCache, RedisCache
from agents.runtime.clock import FakeClock
from agents.runtime.executor import Executor
from agents.runtime.memory import MemoryState
from agents.runtime.ports import ListRecords
from agents.runtime.redis_state import RedisState
from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import AdmitRequest, BreakerConfig, Candidate, RateLimit
from agents.runtime.types import ExecutionRequest, ExecutionStatus, Message, RateLimits
from tests.agents.runtime.support import Commands, ScriptedProvider, StaticConfig, agent, deployment

BREAKER = BreakerConfig()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[tuple[Commands, str]]:
    wire = RedisWire(redis_url)
    prefix = f"bwtest:admitcache:{uuid.uuid4().hex}"
    try:
        yield Commands(wire), prefix
    finally:
        cleaner = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in cleaner.scan_iter(match=f"{prefix}:*")]
        if keys:
            await cleaner.delete(*keys)
        await cleaner.aclose()
        await wire.aclose()


class Rig:
    def __init__(self, commands: Commands, prefix: str, **agent_fields: Any) -> None:
        self.clock = FakeClock()
        self.commands = commands
        self.state = RedisState(commands, prefix=prefix, clock=self.clock)
        self.cache = RedisCache(commands, prefix=prefix, clock=self.clock, in_admission=True)
        self.provider = ScriptedProvider(self.clock)
        self.agent = agent(cache_ttl_s=60, **agent_fields)
        self.config = StaticConfig(
            {"support": self.agent},
            {"primary": (deployment(1, "primary"),), "backup": (deployment(2, "backup"),)},
        )
        self.executor = Executor(
            config=self.config,
            state=self.state,
            providers=self.provider,
            clock=self.clock,
            records=ListRecords(),
            cache=self.cache,
            rng=random.Random(7),
        )

    async def run(self, text: str = "where is my order?", **fields: Any) -> Any:
        request = ExecutionRequest(
            agent="support",
            messages=(Message("user", text),),
            execution_id=str(uuid.uuid4()),
            **fields,
        )
        result = await self.executor.execute(request)
        await self.executor.drain_cache_writes()
        return result


async def test_a_miss_sends_no_get_of_its_own_and_a_hit_comes_back_from_admission(
    redis: tuple[Commands, str],
) -> None:
    rig = Rig(*redis)
    await rig.state.admit(  # load the function library before counting
        AdmitRequest("warm", 1.0, None, None, (), (Candidate(9, 1),), BREAKER)
    )
    rig.commands.take()

    first = await rig.run()
    assert first.status == ExecutionStatus.SUCCEEDED
    assert first.cached is False
    sent = rig.commands.take()
    assert "GET" not in sent
    assert sent.count("FCALL") == 2  # admit (with the lookup) and complete
    assert "SET" in sent  # the answer, stored off the critical path

    second = await rig.run("where   is my order?")  # the same question
    assert second.cached is True
    assert second.output == first.output
    assert second.saved_usd == first.cost_usd > 0
    assert rig.commands.take() == ["FCALL"]  # one round trip: the admit that found it
    assert len(rig.provider.calls) == 1


async def test_a_hit_found_by_admission_takes_no_rate_budget_and_no_lease(
    redis: tuple[Commands, str],
) -> None:
    commands, prefix = redis
    rig = Rig(commands, prefix)
    await rig.run()
    limit = RateLimit("rpm:agent:support", 1, 60.0, 1)
    candidates = (Candidate(1, 1),)  # max_concurrency 1

    key = rig.cache.admission_key(next(iter(await _cache_keys(commands, prefix))))
    for _ in range(3):
        found = await rig.state.admit(
            AdmitRequest(
                str(uuid.uuid4()), 30.0, None, None, (limit,), candidates, BREAKER, cache_key=key
            )
        )
        assert found.cached is not None
        assert not found.ok
        assert CachedAnswer.from_json(found.cached).output == "ok"
    # The rpm slot and the single lease are still free.
    admitted = await rig.state.admit(
        AdmitRequest(str(uuid.uuid4()), 30.0, None, None, (limit,), candidates, BREAKER)
    )
    assert admitted.ok
    assert admitted.deployment_id == 1


async def test_a_rate_limited_caller_still_gets_a_cached_answer(
    redis: tuple[Commands, str],
) -> None:
    rig = Rig(*redis)
    limited: dict[str, Any] = {"api_key_id": 7, "api_key_limits": RateLimits(rpm=1)}
    assert (await rig.run(**limited)).cached is False  # takes the key's one request a minute
    assert (await rig.run("a new question", **limited)).status == ExecutionStatus.DEGRADED
    for _ in range(3):
        result = await rig.run(**limited)
        assert result.status == ExecutionStatus.SUCCEEDED
        assert result.cached is True


async def test_a_corrupt_cached_value_is_a_counted_miss_and_the_call_goes_out(
    redis: tuple[Commands, str],
) -> None:
    commands, prefix = redis
    rig = Rig(commands, prefix)
    await rig.run()
    (stored,) = await _cache_keys(commands, prefix)
    await commands.execute_command("SET", rig.cache.redis_key(stored), b"{broken", "EX", 60)

    result = await rig.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.cached is False
    assert len(rig.provider.calls) == 2
    assert rig.cache.errors == 1
    # The fresh answer replaced the corrupt one: the next caller is served from the cache.
    assert (await rig.run()).cached is True


async def test_when_every_model_is_known_open_the_cached_answer_is_still_served(
    redis: tuple[Commands, str],
) -> None:
    rig = Rig(*redis)
    await rig.run()
    far = rig.clock.now() + 3600
    rig.executor._open_until.update({"deployment:1": far, "deployment:2": far})
    rig.commands.take()

    result = await rig.run()
    assert result.status == ExecutionStatus.SUCCEEDED
    assert result.cached is True
    assert rig.commands.take() == ["GET"]  # refused before admission: looked up on its own
    uncached = await rig.run("a new question")
    assert uncached.status == ExecutionStatus.DEGRADED
    assert uncached.fallback_reason == "circuit_open"


async def test_no_cache_requests_neither_look_up_nor_get_a_hit(
    redis: tuple[Commands, str],
) -> None:
    rig = Rig(*redis)
    await rig.run()
    rig.commands.take()
    result = await rig.run(bypass_cache=True)
    assert result.cached is False
    assert "GET" not in rig.commands.take()
    assert len(rig.provider.calls) == 2


async def test_the_memory_cache_is_looked_up_on_its_own_and_memory_state_refuses_a_lookup() -> None:
    clock = FakeClock()
    assert MemoryCache(clock=clock).admission_key("v1:abc") is None
    assert (
        RedisCache(Commands(RedisWire("redis://127.0.0.1:1")), prefix="p").admission_key("k")
        is None
    )  # not on the state's Redis unless told
    request = AdmitRequest("e1", 1.0, None, None, (), (Candidate(1, 1),), BREAKER, cache_key="x")
    with pytest.raises(ValueError, match="cache_key must be None"):
        await MemoryState(clock).admit(request)


async def _cache_keys(commands: Commands, prefix: str) -> list[str]:
    """The cache keys (without the Redis prefix) stored under ``prefix``."""
    cursor, found = b"0", []
    while True:
        cursor, keys = await commands.execute_command(
            "SCAN", cursor, "MATCH", f"{prefix}:cache:*", "COUNT", 1000
        )
        found += [k.decode().removeprefix(f"{prefix}:cache:") for k in keys]
        if cursor in (b"0", 0, "0"):
            return found
