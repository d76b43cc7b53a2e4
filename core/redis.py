"""One Redis connection pool per process and event loop."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Iterator
from functools import lru_cache

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import StateUnavailable

# Keyed by the loop object (weakly): a new loop may reuse a dead loop's id().
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = (
    weakref.WeakKeyDictionary()
)


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """Redis down or stalled, in an adapter the hot path uses: the runtime's typed
    StateUnavailable (a 503 to the caller), not an untyped error."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StateUnavailable(f"Redis: {exc}") from exc


def get_async_redis() -> aioredis.Redis:
    """The asyncio client for the running loop (a pool cannot be shared across loops)."""
    if settings.REDIS_URL is None:
        raise RuntimeError("REDIS_URL is not set (embedded mode has no Redis)")
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        # A blocking pool: past max_connections a call waits for a free connection (up to
        # `timeout`) instead of failing, so a burst of executions queues rather than errors.
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.BREAKWATER_REDIS_MAX_CONNECTIONS,
            # A pooled connection that died with a restarted Redis fails its next command:
            # that command is sent once more on a new connection. A timeout is not retried:
            # the command may have run (its answer was late), and an Idempotency-Key's SET NX
            # run twice answers the first request 409. redis-py's Retry retries TimeoutError
            # unless told otherwise (tests/core/test_redis.py).
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            retry_on_error=[redis.ConnectionError],
            timeout=5,
            socket_connect_timeout=settings.BREAKWATER_REDIS_TIMEOUT_S,
            # No command of ours blocks in Redis: one unanswered this long means Redis is
            # stalled, and the caller gets an error instead of waiting for ever.
            socket_timeout=settings.BREAKWATER_REDIS_TIMEOUT_S,
            health_check_interval=30,
        )
        client = aioredis.Redis(connection_pool=pool)
        _async_clients[loop] = client
    return client


@lru_cache(maxsize=1)
def get_redis() -> redis.Redis:
    if settings.REDIS_URL is None:
        raise RuntimeError("REDIS_URL is not set (embedded mode has no Redis)")
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)


_wires: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, RedisWire] = (
    weakref.WeakKeyDictionary()
)


def get_async_wire() -> RedisWire:
    """The hot-path client of the running loop (state scripts, journal, response cache): one
    pipelined connection, see :mod:`agents.runtime.redis_wire`."""
    if settings.REDIS_URL is None:
        raise RuntimeError("REDIS_URL is not set (embedded mode has no Redis)")
    loop = asyncio.get_running_loop()
    wire = _wires.get(loop)
    if wire is None:
        timeout = settings.BREAKWATER_REDIS_TIMEOUT_S
        wire = RedisWire(settings.REDIS_URL, connect_timeout_s=timeout, command_timeout_s=timeout)
        _wires[loop] = wire
    return wire


async def close_loop_clients() -> None:
    """Close the running loop's clients, if it made any: a loop about to end (``asyncio.run``
    in a job or a worker task) must not leave them to a loop that no longer exists."""
    loop = asyncio.get_running_loop()
    wire = _wires.pop(loop, None)
    client = _async_clients.pop(loop, None)
    if wire is not None:
        await wire.aclose()
    if client is not None:
        await client.aclose()
