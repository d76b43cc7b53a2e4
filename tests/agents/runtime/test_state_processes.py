"""RedisState across real processes: each a spawned interpreter with its own loop and client.

The breaker race drives time through the clock argument (every process at the same instant),
so the only thing left to chance is the interleaving, which the Lua scripts must make harmless.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.synchronize import Barrier, Event
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.runtime.clock import FakeClock
from agents.runtime.redis_state import RedisState
from agents.runtime.state import BreakerConfig, BreakerState, Candidate, Outcome

START = 1_700_000_000.0
PROCESSES = 4
CALLERS = 50
BREAKER = "agent:race"
CFG = BreakerConfig(
    failure_threshold=1, recovery_timeout_s=60.0, half_open_max_calls=3, probe_timeout_s=30.0
)
JOIN_TIMEOUT_S = 60.0


@pytest.fixture
def ctx() -> SpawnContext:
    return multiprocessing.get_context("spawn")


@pytest.fixture
def processes() -> Iterator[list[SpawnProcess]]:
    started: list[SpawnProcess] = []
    yield started
    for process in started:  # only when a test failed half-way
        if process.is_alive():
            process.kill()
        process.join(5)


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    name = f"bwtest:{uuid.uuid4().hex}"
    yield name
    client = aioredis.Redis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(match=f"{name}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


# --- in the child processes ---


def _race(url: str, prefix: str, callers: int, barrier: Barrier, results: Any) -> None:
    async def main() -> list[tuple[bool, bool, int]]:
        client = aioredis.Redis.from_url(url)
        # recovery_timeout_s after the breaker opened: the next acquire half-opens it
        state = RedisState(client, prefix=prefix, clock=FakeClock(START + 60.0))
        await state.breaker_acquire("agent:warm-up", CFG)  # loads the script, opens a connection
        barrier.wait(JOIN_TIMEOUT_S)
        answers = await asyncio.gather(
            *(state.breaker_acquire(BREAKER, CFG) for _ in range(callers))
        )
        await client.aclose()
        return [(allowed, probe, len(moved)) for allowed, probe, _, moved in answers]

    results.put(asyncio.run(main()))


def _hold_a_lease(url: str, prefix: str, lease_ttl_s: float, fake: bool, taken: Event) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(url)
        state = RedisState(client, prefix=prefix, clock=FakeClock(START) if fake else None)
        selection = await state.select(
            lease_id=f"lease-{os.getpid()}",
            lease_ttl_s=lease_ttl_s,
            candidates=(Candidate(1, max_concurrency=1),),
            breaker=CFG,
        )
        assert selection.deployment_id == 1
        taken.set()
        await asyncio.sleep(3600)  # killed long before this ends

    asyncio.run(main())


# --- the tests ---


async def test_concurrent_callers_in_four_processes_get_exactly_half_open_max_calls_probes(
    redis_url: str, prefix: str, ctx: SpawnContext, processes: list[SpawnProcess]
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    state = RedisState(client, prefix=prefix, clock=FakeClock(START))
    assert await state.breaker_record(BREAKER, CFG, Outcome.FAILURE, 0.1, False)  # opens

    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    shares = [CALLERS // PROCESSES + (n < CALLERS % PROCESSES) for n in range(PROCESSES)]
    for share in shares:
        process = ctx.Process(target=_race, args=(redis_url, prefix, share, barrier, results))
        process.start()
        processes.append(process)
    answers: list[tuple[bool, bool, int]] = []
    for _ in processes:
        answers += await asyncio.to_thread(results.get, True, JOIN_TIMEOUT_S)
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
        assert process.exitcode == 0

    assert len(answers) == CALLERS
    assert sum(allowed for allowed, _, _ in answers) == CFG.half_open_max_calls
    assert all(probe for allowed, probe, _ in answers if allowed)
    assert sum(moved for _, _, moved in answers) == 1  # one caller half-opened it
    state_after = await RedisState(
        client, prefix=prefix, clock=FakeClock(START + 60.0)
    ).breaker_snapshot(BREAKER, CFG)
    assert (state_after.state, state_after.probes_in_flight) == (BreakerState.HALF_OPEN, 3)
    await client.aclose()


async def test_a_lease_held_by_a_killed_process_expires_after_its_ttl(
    redis_url: str, prefix: str, ctx: SpawnContext, processes: list[SpawnProcess]
) -> None:
    taken = ctx.Event()
    process = ctx.Process(target=_hold_a_lease, args=(redis_url, prefix, 30.0, True, taken))
    process.start()
    processes.append(process)
    assert await asyncio.to_thread(taken.wait, JOIN_TIMEOUT_S)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(JOIN_TIMEOUT_S)
    assert process.exitcode == -signal.SIGKILL

    client = aioredis.Redis.from_url(redis_url)
    clock = FakeClock(START)
    state = RedisState(client, prefix=prefix, clock=clock)
    only = (Candidate(1, max_concurrency=1),)
    assert await state.in_flight((1,)) == {1: 1}
    clock.advance(29.75)
    refused = await state.select(lease_id="next", lease_ttl_s=30.0, candidates=only, breaker=CFG)
    assert refused.refusal == "no_deployment"
    clock.advance(0.25)
    assert await state.in_flight((1,)) == {1: 0}
    chosen = await state.select(lease_id="next", lease_ttl_s=30.0, candidates=only, breaker=CFG)
    assert chosen.deployment_id == 1
    await client.aclose()


async def test_with_redis_time_a_killed_process_lease_is_gone_one_ttl_later(
    redis_url: str, prefix: str, ctx: SpawnContext, processes: list[SpawnProcess]
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    state = RedisState(client, prefix=prefix)  # time from Redis TIME, as in production

    async def redis_now() -> float:
        seconds, micros = await client.time()
        return float(seconds + micros / 1_000_000)

    before = await redis_now()
    taken = ctx.Event()
    process = ctx.Process(target=_hold_a_lease, args=(redis_url, prefix, 1.0, False, taken))
    process.start()
    processes.append(process)
    assert await asyncio.to_thread(taken.wait, JOIN_TIMEOUT_S)
    assert process.pid is not None
    os.kill(process.pid, signal.SIGKILL)
    process.join(JOIN_TIMEOUT_S)

    deadline = time.monotonic() + 10.0
    while (await state.in_flight((1,)))[1] != 0:
        assert time.monotonic() < deadline, "the dead process's lease never expired"
        await asyncio.sleep(0.05)
    assert await redis_now() >= before + 1.0  # not dropped before its TTL
    assert await client.exists(f"{prefix}:lease:1") == 0  # and nothing is left behind
    await client.aclose()
