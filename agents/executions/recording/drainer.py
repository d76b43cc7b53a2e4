"""The background loop that moves journal events into the database in the serve process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from django.db import OperationalError, close_old_connections
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("breakwater.recording")

# A store that did not answer this once (a slow Redis, a database restarting): retried, and
# logged on one line until it has failed this many times in a row, then with the traceback.
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OperationalError, OSError, TimeoutError)
_QUIET_FAILURES = 3

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class DrainResult:
    events: int = 0  # events read (stored or set aside) and acknowledged
    rows: int = 0  # executions written
    rejected: int = 0  # events set aside as unstorable
    full: bool = False  # the batch was full: more is probably waiting
    locked: bool = False  # another drainer holds the directory lock; nothing was done


def with_fresh_connections(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` in this (worker) thread with database connections opened and closed here."""
    close_old_connections()
    try:
        return fn(*args, **kwargs)
    finally:
        close_old_connections()


class RecordDrainer:
    """Calls ``drain`` every ``interval_s`` (at once again when a batch was full).

    A failing drain is logged and retried with a growing pause (up to ``max_backoff_s``); the
    events stay in the journal meanwhile. A store that did not answer (a timeout, a refused
    connection) gets a one-line warning for its first two failures in a row, then the
    traceback; anything else gets the traceback at once. ``stop()`` lets the current drain
    finish (a drain is never cancelled halfway: its database work runs in a thread), then
    drains until the journal is empty or ``final_timeout_s`` has passed.
    """

    def __init__(
        self,
        drain: Callable[[], Awaitable[DrainResult]],
        *,
        interval_s: float = 0.2,
        max_backoff_s: float = 5.0,
        final_timeout_s: float = 10.0,
    ) -> None:
        self._drain = drain
        self._interval_s = interval_s
        self._max_backoff_s = max_backoff_s
        self._final_timeout_s = final_timeout_s
        self._wake = asyncio.Event()
        self._busy = asyncio.Lock()  # one drain at a time in this process
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self.drained = 0  # events, since start (for logs and tests)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bw-recorder")

    async def drain_now(self) -> DrainResult:
        """One drain; if the background loop is draining, after it (a caller asking for a drain
        wants what was journaled before it asked: the journal's own lock would only say
        "busy")."""
        async with self._busy:
            result = await self._drain()
        self.drained += result.events
        return result

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                result = await self.drain_now()
            except Exception as exc:
                failures += 1
                pause = min(self._max_backoff_s, self._interval_s * 2**failures)
                message = "draining records failed (%d in a row); retry in %.1fs"
                if isinstance(exc, _TRANSIENT) and failures < _QUIET_FAILURES:
                    log.warning(message + ": %s: %s", failures, pause, type(exc).__name__, exc)
                else:
                    log.exception(message, failures, pause)
            else:
                failures = 0
                pause = 0.0 if result.full else self._interval_s
            if pause:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), pause)
            else:
                await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._final_timeout_s
        while loop.time() < deadline:
            try:
                result = await self.drain_now()
            except Exception:
                log.exception("final drain of records failed; events stay in the journal")
                return
            if not result.full:  # empty now, or another process holds the lock and drains it
                return
        log.warning(
            "final drain stopped after %.0fs; the rest stays in the journal", self._final_timeout_s
        )
