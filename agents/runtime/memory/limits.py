"""Rate limits and concurrency leases of :class:`~agents.runtime.memory.MemoryState`."""

from __future__ import annotations

import math
import threading
from collections import deque

from agents.runtime.clock import Clock
from agents.runtime.state import RateLimit


class _SlidingLog:
    """Admitted costs in the last ``window_s``: exact, no edge bursts."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, int]] = deque()
        self.total = 0

    def prune(self, now: float, window_s: float) -> None:
        while self.entries and self.entries[0][0] <= now - window_s:
            self.total -= self.entries.popleft()[2]

    def retry_after(self, now: float, window_s: float, limit: int, cost: int) -> float:
        if cost > limit:
            return math.inf
        freed = 0
        for at, _, amount in self.entries:
            freed += amount
            if self.total - freed + cost <= limit:
                return max(0.0, at + window_s - now)
        return window_s  # pragma: no cover - unreachable when cost <= limit

    def settle(self, entry_id: str, cost: int) -> None:
        # The entry is recent: search from the newest end (O(1) in practice, not O(window)).
        for index in range(len(self.entries) - 1, -1, -1):
            at, eid, amount = self.entries[index]
            if eid == entry_id:
                self.entries[index] = (at, eid, cost)
                self.total += cost - amount
                return

    def remove(self, entry_id: str) -> None:
        for index in range(len(self.entries) - 1, -1, -1):
            if self.entries[index][1] == entry_id:
                self.total -= self.entries[index][2]
                del self.entries[index]
                return


class LimitCalls:
    """The sliding logs of the rate limits, the leases of the deployments, and their primitives.

    Not a store by itself: :class:`~agents.runtime.memory.MemoryState` creates the clock, the
    one lock and the tables. Each public method takes that lock for its whole body; each ``_``
    helper expects it held, so the composite calls can chain helpers under one acquisition.
    """

    _clock: Clock
    _lock: threading.Lock
    _logs: dict[str, _SlidingLog]
    _leases: dict[int, dict[str, float]]  # deployment id -> lease id -> expiry

    # --- helpers (call with the lock held) ---

    def _log(self, key: str) -> _SlidingLog:
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _SlidingLog()
        return log

    def _load(self, deployment_id: int, now: float) -> int:
        leases = self._leases.get(deployment_id)
        if not leases:
            return 0
        for lease_id in [lid for lid, expiry in leases.items() if expiry <= now]:
            del leases[lease_id]
        return len(leases)

    def _rate_check(self, limits: tuple[RateLimit, ...], now: float) -> float:
        """0.0 when every limit admits its cost, else the longest wait."""
        wait = 0.0
        for limit in limits:
            log = self._log(limit.key)
            log.prune(now, limit.window_s)
            if log.total + limit.cost > limit.limit:
                wait = max(wait, log.retry_after(now, limit.window_s, limit.limit, limit.cost))
        return wait

    def _rate_take(self, limits: tuple[RateLimit, ...], now: float, entry_id: str) -> None:
        for limit in limits:
            log = self._log(limit.key)
            log.entries.append((now, entry_id, limit.cost))
            log.total += limit.cost

    # --- primitives ---

    async def rate_acquire(
        self, limits: tuple[RateLimit, ...], entry_id: str
    ) -> tuple[bool, float]:
        with self._lock:
            now = self._clock.now()
            wait = self._rate_check(limits, now)
            if wait > 0:
                return False, wait
            self._rate_take(limits, now, entry_id)
            return True, 0.0

    async def in_flight(self, deployment_ids: tuple[int, ...]) -> dict[int, int]:
        with self._lock:
            now = self._clock.now()
            return {dep: self._load(dep, now) for dep in deployment_ids}
