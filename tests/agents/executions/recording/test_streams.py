"""The Redis journal writes again what Redis did not take (a stall) or lost (a restart without
its data), against a private redis-server the tests freeze and flush."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.executions.recording.events import row_from_event
from agents.executions.recording.streams import FIELD, RedisJournal
from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import RecordingUnavailable
from agents.runtime.types import ExecutionRequest, Message
from tests.live import private_redis

STREAM = "bw:journal"


@pytest.fixture
async def redis_server() -> AsyncIterator[tuple[str, object]]:
    with private_redis() as (url, proc):
        yield url, proc


def request() -> ExecutionRequest:
    return ExecutionRequest(
        agent="support", messages=(Message("user", "hi"),), execution_id=str(uuid.uuid4())
    )


async def ids_in_stream(url: str) -> list[str]:
    client = aioredis.Redis.from_url(url)
    try:
        entries: list[Any] = list(await client.xrange(STREAM) or [])
    finally:
        await client.aclose()
    return [str(row_from_event(fields[FIELD.encode()]).id) for _, fields in entries]


async def test_an_event_redis_did_not_take_in_a_stall_is_written_once_it_answers(
    redis_server: tuple[str, object],
) -> None:
    url, proc = redis_server
    wire = RedisWire(url, command_timeout_s=0.2)
    journal = RedisJournal(wire)
    await journal.maintain()
    stalled = request()
    proc.send_signal(signal.SIGSTOP)  # type: ignore[attr-defined]
    try:
        with pytest.raises(RecordingUnavailable):
            await journal.started(stalled, time.time())
    finally:
        proc.send_signal(signal.SIGCONT)  # type: ignore[attr-defined]
    assert await journal.maintain() == 1
    assert stalled.execution_id in await ids_in_stream(url)
    assert await journal.maintain() == 0  # written once: nothing left to send
    await wire.aclose()


async def test_a_redis_that_lost_its_data_gets_the_writers_recent_events_again(
    redis_server: tuple[str, object],
) -> None:
    url, _ = redis_server
    wire = RedisWire(url)
    journal = RedisJournal(wire)
    await journal.maintain()  # the stream's epoch, as a writer learns it at start-up
    written = [request() for _ in range(3)]
    for item in written:
        await journal.started(item, time.time())
    assert await journal.maintain() == 0  # nothing lost yet

    client = aioredis.Redis.from_url(url)
    await client.flushall()  # a restart without its data
    await client.aclose()
    assert await ids_in_stream(url) == []

    assert await journal.maintain() == 3
    assert sorted(await ids_in_stream(url)) == sorted(r.execution_id for r in written)
    assert await journal.maintain() == 0
    await wire.aclose()


async def test_only_the_last_minute_is_written_again(redis_server: tuple[str, object]) -> None:
    url, _ = redis_server
    clock = [1000.0]
    wire = RedisWire(url)
    journal = RedisJournal(wire, clock=lambda: clock[0])
    await journal.maintain()
    await journal.started(request(), time.time())
    clock[0] += 61.0  # a minute later: long drained
    recent = request()
    await journal.started(recent, time.time())
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    await client.aclose()
    assert await journal.maintain() == 1
    assert await ids_in_stream(url) == [recent.execution_id]
    await wire.aclose()


async def test_events_the_drainers_stored_are_not_written_again(
    redis_server: tuple[str, object],
) -> None:
    url, _ = redis_server
    wire = RedisWire(url)
    journal = RedisJournal(wire)
    await journal.maintain()
    written = [request() for _ in range(3)]
    for item in written:
        await journal.started(item, time.time())
    client = aioredis.Redis.from_url(url)
    entries: list[Any] = list(await client.xrange(STREAM) or [])
    await client.xdel(STREAM, entries[0][0], entries[1][0])  # as a drainer does
    assert await journal.maintain() == 0  # it learns that the first two are stored
    await client.flushall()
    await client.aclose()
    assert await journal.maintain() == 1
    assert await ids_in_stream(url) == [written[2].execution_id]
    await wire.aclose()
