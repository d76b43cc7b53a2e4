"""The hot path's Redis client (agents/runtime/redis_wire.py), against the real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from agents.runtime import redis_wire
from agents.runtime.redis_wire import RedisWire


@pytest.fixture
async def wire(redis_url: str) -> AsyncIterator[RedisWire]:
    client = RedisWire(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def key(redis_client: aioredis.Redis) -> str:
    return f"bwtest:wire:{uuid.uuid4().hex}"


async def test_commands_get_their_own_replies_in_every_shape(wire: RedisWire, key: str) -> None:
    try:
        assert await wire.execute_command("SET", key, "v") == b"OK"
        assert await wire.execute_command("GET", key) == b"v"
        assert await wire.execute_command("GET", key + ":missing") is None
        assert await wire.execute_command("EVAL", "return {1, 'a', {2}}", 0) == [1, b"a", [2]]
    finally:
        await wire.execute_command("DEL", key)


async def test_concurrent_commands_leave_in_one_write_and_are_answered_in_order(
    redis_url: str, key: str
) -> None:
    writes: list[bytes] = []

    class Recording(redis_wire._Connection):
        def _flush(self) -> None:
            writes.append(b"".join(self._out))
            super()._flush()

    wire = RedisWire(redis_url, client_name=None)
    wire.connection_class = Recording
    try:
        await wire.execute_command("PING")
        writes.clear()
        replies = await asyncio.gather(*(wire.execute_command("INCR", key) for _ in range(50)))
        assert replies == list(range(1, 51))
        assert len(writes) == 1
        assert writes[0].count(b"INCR") == 50
    finally:
        await wire.execute_command("DEL", key)
        await wire.aclose()


async def test_error_replies_are_raised_as_redis_py_raises_them(wire: RedisWire) -> None:
    with pytest.raises(NoScriptError):
        await wire.execute_command("EVALSHA", "0" * 40, 0)
    with pytest.raises(ResponseError, match="unknown command"):
        await wire.execute_command("NOSUCHCOMMAND")
    # the connection is still in step afterwards
    assert await wire.execute_command("PING") == b"PONG"


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(
    wire: RedisWire, key: str
) -> None:
    try:
        await wire.execute_command("SET", key, "before")
        slow = asyncio.ensure_future(wire.execute_command("EVAL", "return 'slow'", 0))
        await asyncio.sleep(0)  # sent
        slow.cancel()
        assert await wire.execute_command("GET", key) == b"before"
    finally:
        await wire.execute_command("DEL", key)


async def test_a_killed_connection_fails_what_is_in_flight_and_the_next_call_reconnects(
    wire: RedisWire, redis_client: aioredis.Redis
) -> None:
    name = f"bwtest-{uuid.uuid4().hex[:8]}"
    await wire.execute_command("CLIENT", "SETNAME", name)
    blocked = asyncio.ensure_future(wire.execute_command("BLPOP", f"{name}:never", 10))
    await asyncio.sleep(0.1)
    await _command(redis_client, "CLIENT", "KILL", "ID", await _id(redis_client, name))
    with pytest.raises(RedisConnectionError):
        await blocked
    assert await wire.execute_command("PING") == b"PONG"


async def _command(client: aioredis.Redis, *args: object) -> object:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


async def _id(client: aioredis.Redis, name: str) -> int:
    for entry in await client.client_list():
        if entry.get("name") == name:
            return int(entry["id"])
    raise AssertionError(f"no client named {name}")


async def test_a_command_left_unanswered_fails_with_a_timeout_and_frees_the_connection(
    redis_url: str,
) -> None:
    wire = RedisWire(redis_url, command_timeout_s=0.2)
    try:
        with pytest.raises(RedisTimeoutError, match=r"did not answer within 0\.2 s"):
            await wire.execute_command("BLPOP", f"bwtest:wire:{uuid.uuid4().hex}", 5)
        assert await wire.execute_command("PING") == b"PONG"  # a new connection
    finally:
        await wire.aclose()


async def test_an_unreachable_server_is_an_error_naming_the_cause() -> None:
    wire = RedisWire("redis://127.0.0.1:1/0")
    with pytest.raises(RedisConnectionError, match="could not connect to Redis"):
        await wire.execute_command("PING")


async def test_callers_arriving_while_it_connects_share_one_connection(redis_url: str) -> None:
    opened = 0

    class Counting(redis_wire._Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            nonlocal opened
            opened += 1
            super().connection_made(transport)

    wire = RedisWire(redis_url)
    wire.connection_class = Counting
    try:
        replies = await asyncio.gather(*(wire.execute_command("PING") for _ in range(20)))
        assert replies == [b"PONG"] * 20
        assert opened == 1
    finally:
        await wire.aclose()


async def test_the_database_user_and_password_come_from_the_url(
    redis_client: aioredis.Redis, redis_url: str
) -> None:
    user, password = f"bwtest{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await _command(redis_client, "ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    base = redis_url.split("://", 1)[1].rsplit("/", 1)[0].split("@")[-1]
    wire = RedisWire(f"redis://{user}:{password}@{base}/9")
    wrong = RedisWire(f"redis://{user}:wrong@{base}/9")
    try:
        assert await wire.execute_command("ACL", "WHOAMI") == user.encode()
        assert (await wire.execute_command("CLIENT", "INFO")).count(b" db=9 ") == 1
        with pytest.raises(ResponseError, match="WRONGPASS"):
            await wrong.execute_command("PING")
    finally:
        await wire.aclose()
        await wrong.aclose()
        with contextlib.suppress(Exception):
            await _command(redis_client, "ACL", "DELUSER", user)


async def test_an_argument_it_cannot_send_is_refused_without_shifting_later_replies(
    wire: RedisWire, key: str
) -> None:
    try:
        await wire.execute_command("SET", key, "v")
        with pytest.raises(TypeError):
            await wire.execute_command("SET", key, None)
        assert await wire.execute_command("GET", key) == b"v"
    finally:
        await wire.execute_command("DEL", key)
