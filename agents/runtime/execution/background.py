"""State calls that must still reach the shared state after their caller was answered (an
abandoned admission, a settlement that timed out), and other work that outlives its execution:
tracked, retried with backoff, given a last chance at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from agents.runtime.clock import Clock
from agents.runtime.execution.context import Execution
from agents.runtime.state import Abandon, Candidate, StateStore, StateUnavailable

log = logging.getLogger("breakwater.runtime")


class Background:
    __slots__ = ("_clock", "_state", "tasks")

    def __init__(self, state: StateStore, clock: Clock) -> None:
        self._state = state
        self._clock = clock
        self.tasks: set[asyncio.Future[None]] = set()

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a tracked task: it is not awaited by its caller."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def retry(
        self, call: Callable[[], Awaitable[object]], what: str, give_up_after_s: float
    ) -> None:
        """Run ``call`` until the state store takes it (it is idempotent), backing off; give up
        after ``give_up_after_s`` (the leases and reservations it concerns have expired by
        then)."""

        async def until_done() -> None:
            give_up = self._clock.monotonic() + give_up_after_s
            delay = 0.25
            while True:
                try:
                    await call()
                    return
                except StateUnavailable:
                    if self._clock.monotonic() + delay > give_up:
                        log.error("gave up retrying a state %s after %.0f s", what, give_up_after_s)
                        return
                await self._clock.sleep(delay)
                delay = min(delay * 2, 1.0)

        self.run(until_done())

    def give_back(
        self,
        execution: Execution,
        *,
        candidates: tuple[Candidate, ...] = (),
        budget_keys: tuple[str, ...] = (),
        rate_keys: tuple[str, ...] = (),
    ) -> None:
        """Give back what a state call whose answer ``execution`` never had may have taken for
        it (its lease on ``candidates``, its reservations and rate-log entries), nothing
        charged; its lease id is marked gone for the lease's lifetime, so the call takes
        nothing if it lands later still."""
        abandon = Abandon(
            lease_ids=(execution.request.execution_id,),
            deployment_ids=tuple(c.deployment_id for c in candidates),
            budget_keys=budget_keys,
            rate_keys=rate_keys,
            charge=False,
            tombstone_ttl_s=execution.lease_ttl,
        )
        self.retry(lambda: self._state.abandon(abandon), "abandon", execution.lease_ttl)

    async def drain(self, timeout_s: float = 1.0) -> None:
        """Give what is still running a last chance, then cancel it."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
