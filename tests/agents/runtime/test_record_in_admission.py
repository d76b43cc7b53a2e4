"""The journal's "started" event appended by the admission itself (distributed mode).

With a :class:`RedisJournal` on the state's Redis (``admission_records``, as the engine builds
it), an admission that admits appends the execution's "started" event in the same atomic step
as its reservation: a process killed at any moment leaves no reservation without the record
that has it found and charged, so budget counters never hold money the ledger never hears of.
A refusal appends nothing. These tests run on a real Redis through :class:`RedisWire`.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from agents.executions.recording.streams import RedisJournal
from agents.runtime.budgets import holds_for
from agents.runtime.clock import FakeClock
from agents.runtime.executor import Executor
from agents.runtime.memory import MemoryState
from agents.runtime.redis_state import RedisState
from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import (
    AdmitRequest,
    BreakerConfig,
    BudgetHold,
    Candidate,
    StreamRecord,
    WindowInit,
)
from agents.runtime.types import BudgetRule, ExecutionRequest, ExecutionStatus, Message
from tests.agents.runtime.support import Commands, ScriptedProvider, StaticConfig, agent, deployment

BREAKER = BreakerConfig()
DAILY = BudgetRule(id=7, scope="global", target="*", window="daily", limit_usd=Decimal("1"))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[tuple[Commands, str, aioredis.Redis]]:
    wire = RedisWire(redis_url)
    prefix = f"bwtest:admitrecord:{uuid.uuid4().hex}"
    reader = aioredis.Redis.from_url(redis_url)
    try:
        yield Commands(wire), prefix, reader
    finally:
        keys = [key async for key in reader.scan_iter(match=f"{prefix}:*")]
        if keys:
            await reader.delete(*keys)
        await reader.aclose()
        await wire.aclose()


class Rig:
    def __init__(self, commands: Commands, prefix: str, reader: aioredis.Redis) -> None:
        self.clock = FakeClock()
        self.commands = commands
        self.reader = reader
        self.state = RedisState(commands, prefix=prefix, clock=self.clock)
        self.journal = RedisJournal(commands, f"{prefix}:journal", owner="serve-test")
        self.provider = ScriptedProvider(self.clock)
        self.config = StaticConfig(
            {"support": agent(max_tokens=100)},
            {"primary": (deployment(1, "primary"),)},
            rules=(DAILY,),
        )
        self.executor = Executor(
            config=self.config,
            state=self.state,
            providers=self.provider,
            clock=self.clock,
            records=self.journal,
            admission_records=self.journal,
            rng=random.Random(7),
        )

    async def run(self) -> Any:
        return await self.executor.execute(
            ExecutionRequest(
                agent="support",
                messages=(Message("user", "where is my order?"),),
                execution_id=str(uuid.uuid4()),
            )
        )

    async def entries(self) -> list[tuple[bytes, dict[bytes, bytes]]]:
        return list(await self.reader.xrange(self.journal.stream))  # type: ignore[arg-type]

    async def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(fields[b"e"]) for _, fields in await self.entries()]

    def window(self) -> str:
        return holds_for((DAILY,), self.clock.now(), 0)[0].key

    async def prepare(self) -> None:
        await self.state.budget_prepare((WindowInit(self.window(), 0, 86_400.0 * 2),))


def _admit(lease_id: str, key: str, amount: int, record: StreamRecord | None) -> AdmitRequest:
    return AdmitRequest(
        lease_id,
        60.0,
        None,
        None,
        (),
        (Candidate(9, 1),),
        BREAKER,
        budgets=(BudgetHold(key, 1_000_000, amount, 86_400.0),),
        record=record,
    )


async def test_an_admitted_execution_is_recorded_by_its_own_admission(
    redis: tuple[Commands, str, aioredis.Redis],
) -> None:
    rig = Rig(*redis)
    await rig.prepare()
    rig.commands.take()

    result = await rig.run()

    assert result.status == ExecutionStatus.SUCCEEDED
    sent = rig.commands.take()
    assert sent.count("XADD") == 1  # "finished" only: "started" rode on the admission
    assert sent.count("FCALL") == 2  # admit and complete
    started, finished = await rig.events()
    assert started["event"] == "started"
    assert started["id"] == finished["id"] == result.execution_id
    assert started["owner"] == "serve-test"
    assert started["reserved_micros"] > 0  # what a dead process would be charged
    assert finished["event"] == "finished"


async def test_a_refused_execution_records_only_its_end_and_reserves_nothing(
    redis: tuple[Commands, str, aioredis.Redis],
) -> None:
    rig = Rig(*redis)
    await rig.state.budget_prepare((WindowInit(rig.window(), 999_990, 86_400.0 * 2),))

    result = await rig.run()

    assert result.fallback_reason == "budget_exceeded"
    assert [event["event"] for event in await rig.events()] == ["finished"]
    assert (await rig.state.budget_usage((rig.window(),)))[rig.window()] == (999_990, 0)


async def test_a_reservation_left_by_a_killed_process_always_has_its_record(
    redis: tuple[Commands, str, aioredis.Redis],
) -> None:
    """The process dies right after its admission (nothing settles): the reservation it holds
    is in the journal, with its amount, under the entry id the admission returned."""
    rig = Rig(*redis)
    await rig.prepare()
    request = ExecutionRequest(
        agent="support", messages=(Message("user", "hi"),), execution_id=str(uuid.uuid4())
    )
    record = rig.journal.started_record(request, rig.clock.now(), reserved_micros=1_500)

    admission = await rig.state.admit(_admit(request.execution_id, rig.window(), 1_500, record))

    assert admission.ok
    assert (await rig.state.budget_usage((rig.window(),)))[rig.window()] == (0, 1_500)
    entries = await rig.entries()
    assert [entry_id for entry_id, _ in entries] == [admission.record_id]
    event = orjson.loads(entries[0][1][b"e"])
    assert (event["event"], event["id"], event["reserved_micros"]) == (
        "started",
        request.execution_id,
        1_500,
    )


async def test_an_admission_refused_for_its_budget_appends_nothing(
    redis: tuple[Commands, str, aioredis.Redis],
) -> None:
    rig = Rig(*redis)
    await rig.prepare()
    record = StreamRecord(rig.journal.stream, 1000, "e", b"{}")

    admission = await rig.state.admit(_admit("over", rig.window(), 2_000_000, record))

    assert admission.refusal == "budget_exceeded"
    assert admission.record_id is None
    assert await rig.reader.xlen(rig.journal.stream) == 0


async def test_memory_state_refuses_a_record_it_cannot_write() -> None:
    record = StreamRecord("journal", 1000, "e", b"{}")
    with pytest.raises(ValueError, match="record must be None"):
        await MemoryState(FakeClock()).admit(_admit("x", "budget:1:d", 1, record))
