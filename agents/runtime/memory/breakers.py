"""The circuit breakers of :class:`~agents.runtime.memory.MemoryState`: the cell and its calls."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from agents.runtime.clock import Clock
from agents.runtime.state import (
    BreakerAction,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    Outcome,
    Transition,
)

_AUTO = "auto"
_MODE_STATE = {
    "forced_open": BreakerState.FORCED_OPEN,
    "forced_closed": BreakerState.FORCED_CLOSED,
    "disabled": BreakerState.DISABLED,
}
_FAIL_BIT = 1
_SLOW_BIT = 2


@dataclass
class _Breaker:
    mode: str = _AUTO
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    window: deque[int] = field(default_factory=deque)
    failures: int = 0
    slow: int = 0
    open_until: float = 0.0
    probes_issued: int = 0
    probes_ok: int = 0
    probe_deadline: float = 0.0

    def effective(self) -> BreakerState:
        return _MODE_STATE.get(self.mode, self.state)

    def clear_counts(self) -> None:
        self.consecutive = 0
        self.window.clear()
        self.failures = 0
        self.slow = 0
        self.probes_issued = 0
        self.probes_ok = 0

    def open(self, key: str, now: float, cfg: BreakerConfig, reason: str) -> Transition:
        before = self.state
        self.state = BreakerState.OPEN
        self.open_until = now + cfg.recovery_timeout_s
        self.clear_counts()
        return Transition(key, before, BreakerState.OPEN, now, reason)

    def half_open(self, key: str, now: float, cfg: BreakerConfig) -> Transition:
        self.state = BreakerState.HALF_OPEN
        self.probes_issued = 0
        self.probes_ok = 0
        self.probe_deadline = now + cfg.probe_timeout_s
        return Transition(key, BreakerState.OPEN, BreakerState.HALF_OPEN, now, "recovery timeout")

    def close(self, key: str, now: float, reason: str) -> Transition:
        before = self.state
        self.state = BreakerState.CLOSED
        self.open_until = 0.0
        self.clear_counts()
        return Transition(key, before, BreakerState.CLOSED, now, reason)

    def peek(self, key: str, now: float, cfg: BreakerConfig) -> tuple[bool, float]:
        """Would acquire admit? (no mutation) ``(allowed, retry_after)``."""
        if self.mode == "forced_open":
            return False, cfg.recovery_timeout_s
        if self.mode in ("forced_closed", "disabled"):
            return True, 0.0
        if self.state == BreakerState.OPEN:
            if now < self.open_until:
                return False, self.open_until - now
            return True, 0.0  # would move to half-open and take the first probe
        if self.state == BreakerState.HALF_OPEN:
            if self.probes_issued < cfg.half_open_max_calls:
                return True, 0.0
            if now >= self.probe_deadline:
                return False, cfg.recovery_timeout_s
            return False, max(0.0, self.probe_deadline - now)
        return True, 0.0

    def acquire(
        self, key: str, now: float, cfg: BreakerConfig
    ) -> tuple[bool, bool, float, list[Transition]]:
        """``(allowed, probe, retry_after, transitions)``."""
        transitions: list[Transition] = []
        if self.mode == "forced_open":
            return False, False, cfg.recovery_timeout_s, transitions
        if self.mode in ("forced_closed", "disabled"):
            return True, False, 0.0, transitions
        if self.state == BreakerState.OPEN:
            if now < self.open_until:
                return False, False, self.open_until - now, transitions
            transitions.append(self.half_open(key, now, cfg))
        if self.state == BreakerState.HALF_OPEN:
            if self.probes_issued < cfg.half_open_max_calls:
                self.probes_issued += 1
                return True, True, 0.0, transitions
            if now >= self.probe_deadline:
                transitions.append(self.open(key, now, cfg, "half-open probes timed out"))
                return False, False, cfg.recovery_timeout_s, transitions
            return False, False, max(0.0, self.probe_deadline - now), transitions
        return True, False, 0.0, transitions

    def record(
        self,
        key: str,
        now: float,
        cfg: BreakerConfig,
        outcome: Outcome,
        duration_s: float,
        probe: bool,
    ) -> list[Transition]:
        if self.mode in ("disabled", "forced_open"):
            return []
        if probe and self.mode == _AUTO and self.state == BreakerState.HALF_OPEN:
            if outcome == Outcome.FAILURE:
                return [self.open(key, now, cfg, "half-open probe failed")]
            if outcome == Outcome.IGNORED:
                self.probes_issued = max(0, self.probes_issued - 1)  # the slot is free again
                return []
            self.probes_ok += 1
            if self.probes_ok >= cfg.half_open_max_calls:
                return [self.close(key, now, "half-open probes succeeded")]
            return []
        if self.effective() not in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED):
            return []  # a late answer from before the breaker opened changes nothing
        if outcome == Outcome.IGNORED:
            return []
        code = _FAIL_BIT if outcome == Outcome.FAILURE else 0
        if cfg.slow_call_s is not None and duration_s > cfg.slow_call_s:
            code |= _SLOW_BIT
        self.consecutive = self.consecutive + 1 if code & _FAIL_BIT else 0
        self.window.append(code)
        self.failures += code & _FAIL_BIT
        self.slow += (code & _SLOW_BIT) >> 1
        while len(self.window) > cfg.window_size:  # (a window made smaller shrinks at once)
            old = self.window.popleft()
            self.failures -= old & _FAIL_BIT
            self.slow -= (old & _SLOW_BIT) >> 1
        if self.mode != _AUTO:
            return []
        if self.consecutive >= cfg.failure_threshold:
            return [self.open(key, now, cfg, f"{self.consecutive} consecutive failures")]
        calls = len(self.window)
        if calls >= cfg.minimum_calls:
            if self.failures / calls >= cfg.failure_rate_threshold:
                return [self.open(key, now, cfg, f"failure rate {self.failures}/{calls}")]
            if cfg.slow_call_s is not None and self.slow / calls >= cfg.slow_call_rate_threshold:
                return [self.open(key, now, cfg, f"slow-call rate {self.slow}/{calls}")]
        return []

    def command(self, key: str, now: float, action: BreakerAction) -> list[Transition]:
        before = self.effective()
        if action == "reset":
            self.mode = _AUTO
            self.state = BreakerState.CLOSED
            self.open_until = 0.0
            self.clear_counts()
        else:
            self.mode = {
                "force_open": "forced_open",
                "force_close": "forced_closed",
                "disable": "disabled",
            }[action]
        after = self.effective()
        return (
            [] if before == after else [Transition(key, before, after, now, f"operator {action}")]
        )


class BreakerCalls:
    """The breaker table and its primitives.

    Not a store by itself: :class:`~agents.runtime.memory.MemoryState` creates the clock, the
    one lock and the tables. Each public method takes that lock for its whole body; each ``_``
    helper expects it held, so the composite calls can chain helpers under one acquisition.
    """

    _clock: Clock
    _lock: threading.Lock
    _breakers: dict[str, _Breaker]

    # --- helpers (call with the lock held) ---

    def _breaker(self, key: str) -> _Breaker:
        cell = self._breakers.get(key)
        if cell is None:
            cell = self._breakers[key] = _Breaker()
        return cell

    # --- primitives ---

    async def breaker_acquire(
        self, key: str, config: BreakerConfig
    ) -> tuple[bool, bool, float, tuple[Transition, ...]]:
        with self._lock:
            allowed, probe, retry, moved = self._breaker(key).acquire(
                key, self._clock.now(), config
            )
            return allowed, probe, retry, tuple(moved)

    async def breaker_record(
        self, key: str, config: BreakerConfig, outcome: Outcome, duration_s: float, probe: bool
    ) -> tuple[Transition, ...]:
        with self._lock:
            return tuple(
                self._breaker(key).record(
                    key, self._clock.now(), config, outcome, duration_s, probe
                )
            )

    async def breaker_snapshot(self, key: str, config: BreakerConfig) -> BreakerSnapshot:
        with self._lock:
            cell = self._breaker(key)
            now = self._clock.now()
            state = cell.effective()
            open_until: float | None = None
            probes = 0
            if state == BreakerState.OPEN:
                if cell.open_until > now:
                    open_until = cell.open_until
                else:
                    # Past its recovery time an open breaker is half-open in effect: the next
                    # acquire moves it there and takes a probe. Say so without moving it.
                    state = BreakerState.HALF_OPEN
            elif state == BreakerState.HALF_OPEN:
                probes = cell.probes_issued - cell.probes_ok
            return BreakerSnapshot(
                key=key,
                state=state,
                consecutive_failures=cell.consecutive,
                window_calls=len(cell.window),
                window_failures=cell.failures,
                window_slow=cell.slow,
                open_until=open_until,
                probes_in_flight=probes,
            )

    async def breaker_command(self, key: str, action: BreakerAction) -> tuple[Transition, ...]:
        with self._lock:
            return tuple(self._breaker(key).command(key, self._clock.now(), action))
