"""The asyncio Redis client of the apps (``core.redis.get_async_redis``) against a private
redis-server."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from core.redis import get_async_redis
from tests.live import private_redis

# Counts, then keeps Redis busy for 0.4 s: the command has run, its answer comes late.
SLOW_INCR = """
redis.call('INCR', KEYS[1])
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 400000 then break end
end
return 1
"""


async def test_a_command_that_timed_out_is_not_sent_again(settings: Any) -> None:
    # A command whose answer is late (past BREAKWATER_REDIS_TIMEOUT_S, 0.25 s) may well have
    # run: sending it again runs it twice. For an Idempotency-Key's claim (SET NX) that
    # answered a first request with 409 "still being processed" on a busy machine.
    with private_redis() as (url, _):
        settings.REDIS_URL = url
        client = get_async_redis()
        with pytest.raises(redis.TimeoutError):
            await client.eval(SLOW_INCR, 1, "counted")
        await client.aclose()
        check = redis.Redis.from_url(url)
        for _ in range(20):  # a second run, if one was sent, ends within 0.4 s of the first
            check.ping()
        assert int(check.get("counted") or 0) == 1
