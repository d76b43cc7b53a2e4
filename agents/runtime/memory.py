"""In-process :class:`~agents.runtime.state.StateStore` for the embedded mode.

A plain-Python mirror of the Redis Lua scripts (``redis_state.py``); both pass the same suite.
One lock guards everything, so threads with their own event loops may share an instance.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

from agents.runtime.clock import Clock, SystemClock
from agents.runtime.state import (
    Abandon,
    Admission,
    AdmitRefusal,
    AdmitRequest,
    BreakerAction,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BudgetHold,
    BudgetWindow,
    Candidate,
    Completion,
    Outcome,
    RateLimit,
    Selection,
    Transition,
    WindowInit,
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


@dataclass
class _Budget:
    spent: int = 0
    reservations: dict[str, tuple[int, float]] = field(
        default_factory=dict
    )  # id -> (amount, expiry)
    ready: bool = False  # written by budget_prepare (a window created by a read is not)
    refused: int = 0
    min_refused: int = 0
    # Settlements that came while the window was not ready (entry id -> actual): the rebuild
    # counts them as spent instead of restoring their executions' reservations.
    orphans: dict[str, int] = field(default_factory=dict)

    def reserved(self, now: float) -> int:
        # An expired reservation's process never said what it spent: it is spent.
        for entry_id in [e for e, (_, expiry) in self.reservations.items() if expiry <= now]:
            self.spent += self.reservations.pop(entry_id)[0]
        return sum(amount for amount, _ in self.reservations.values())

    def hold(self, entry_id: str, amount: int, expiry: float) -> None:
        held, _ = self.reservations.get(entry_id, (0, expiry))
        self.reservations[entry_id] = (held + amount, expiry)

    def settle(self, entry_id: str, actual: int) -> None:
        # Without its reservation (settled already, or expired into spend) nothing changes:
        # a settlement sent twice counts once.
        if self.reservations.pop(entry_id, None) is not None:
            self.spent += max(0, actual)
        elif not self.ready:
            self.orphans[entry_id] = max(0, actual)

    def refuse(self, amount: int) -> None:
        self.refused += 1
        self.min_refused = amount if not self.min_refused else min(self.min_refused, amount)


_HEX = frozenset("0123456789abcdefABCDEF")


def spread(lease_id: str) -> float:
    """A number in [0, 1) read from the lease id's first 8 hex digits (lease ids are execution
    ids, random UUIDs); 0 for ids that do not start so. The same in both stores (lib.lua)."""
    head = lease_id[:8]
    if len(head) == 8 and all(ch in _HEX for ch in head):
        return int(head, 16) / 4294967296
    return 0.0


class MemoryState:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}
        self._logs: dict[str, _SlidingLog] = {}
        self._leases: dict[int, dict[str, float]] = {}
        self._budgets: dict[str, _Budget] = {}
        self._gone: dict[str, float] = {}  # abandoned lease id -> until when it stays gone

    # --- helpers (call with the lock held) ---

    def _breaker(self, key: str) -> _Breaker:
        cell = self._breakers.get(key)
        if cell is None:
            cell = self._breakers[key] = _Breaker()
        return cell

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

    def _budget(self, key: str) -> _Budget:
        cell = self._budgets.get(key)
        if cell is None:
            cell = self._budgets[key] = _Budget()
        return cell

    def _budget_unknown(self, holds: tuple[BudgetHold, ...]) -> tuple[str, ...]:
        return tuple(h.key for h in holds if not self._budget(h.key).ready)

    def _budget_check(self, holds: tuple[BudgetHold, ...], now: float) -> bool:
        """Every hold fits; the ones that do not count a refusal."""
        ok = True
        for h in holds:
            cell = self._budget(h.key)
            if not cell.ready:
                ok = False
            elif cell.reserved(now) + cell.spent + h.amount > h.limit:
                cell.refuse(h.amount)
                ok = False
        return ok

    def _is_gone(self, lease_id: str, now: float) -> bool:
        until = self._gone.get(lease_id)
        if until is None:
            return False
        if until <= now:
            del self._gone[lease_id]
            return False
        return True

    def _budget_take(
        self, holds: tuple[BudgetHold, ...], now: float, entry_id: str, ttl_s: float
    ) -> dict[str, int]:
        remaining = {}
        for h in holds:
            cell = self._budget(h.key)
            cell.hold(entry_id, h.amount, now + ttl_s)
            reserved = cell.reserved(now)
            remaining[h.key] = h.limit - cell.spent - reserved
        return remaining

    def _budget_left(self, holds: tuple[BudgetHold, ...], now: float) -> dict[str, int]:
        left = {}
        for h in holds:
            cell = self._budget(h.key)
            reserved = cell.reserved(now)  # first: an expired reservation becomes spend
            left[h.key] = h.limit - cell.spent - reserved
        return left

    def _rate_take(self, limits: tuple[RateLimit, ...], now: float, entry_id: str) -> None:
        for limit in limits:
            log = self._log(limit.key)
            log.entries.append((now, entry_id, limit.cost))
            log.total += limit.cost

    def _select(
        self,
        now: float,
        lease_id: str,
        lease_ttl_s: float,
        candidates: tuple[Candidate, ...],
        cfg: BreakerConfig,
        transitions: list[Transition],
        open_until: dict[str, float],
        commit: bool,
    ) -> tuple[int | None, bool, float, bool]:
        """``(deployment_id, probe, retry_after, any_had_capacity)`` by least weighted load."""
        ratio = {c.deployment_id: self._load(c.deployment_id, now) / c.weight for c in candidates}
        ranked = sorted(
            candidates, key=lambda c: (ratio[c.deployment_id], -c.weight, c.deployment_id)
        )
        tied = sum(1 for c in ranked if ratio[c.deployment_id] == ratio[ranked[0].deployment_id])
        if tied > 1:
            # Equally loaded (always, at low traffic): pick by weight, with the lease id as the
            # die, so that weights hold at any concurrency. lib.lua does exactly the same.
            point = spread(lease_id) * sum(c.weight for c in ranked[:tied])
            for index in range(tied):
                point -= ranked[index].weight
                if point < 0:
                    ranked.insert(0, ranked.pop(index))
                    break
        wait = math.inf
        had_capacity = False
        for candidate in ranked:
            if self._load(candidate.deployment_id, now) >= candidate.max_concurrency:
                continue
            had_capacity = True
            cell = self._breaker(candidate.breaker_key)
            if not commit:
                allowed, retry = cell.peek(candidate.breaker_key, now, cfg)
                if allowed:
                    return candidate.deployment_id, False, 0.0, True
                wait = min(wait, retry)
                continue
            allowed, probe, retry, moved = cell.acquire(candidate.breaker_key, now, cfg)
            transitions.extend(moved)
            if allowed:
                self._leases.setdefault(candidate.deployment_id, {})[lease_id] = now + lease_ttl_s
                return candidate.deployment_id, probe, 0.0, True
            wait = min(wait, retry)
            if cell.state == BreakerState.OPEN:
                open_until[candidate.breaker_key] = cell.open_until
        return None, False, (0.0 if math.isinf(wait) else wait), had_capacity

    # --- composite calls ---

    async def admit(self, request: AdmitRequest) -> Admission:
        if request.cache_key is not None:
            raise ValueError("MemoryState cannot read a response cache: cache_key must be None")
        with self._lock:
            now = self._clock.now()
            if self._is_gone(request.lease_id, now):
                return Admission("late", 0.0, None, False, False)
            transitions: list[Transition] = []
            open_until: dict[str, float] = {}
            agent_cell = None
            if request.agent_breaker_key is not None and request.agent_breaker is not None:
                agent_cell = self._breaker(request.agent_breaker_key)
                allowed, retry = agent_cell.peek(
                    request.agent_breaker_key, now, request.agent_breaker
                )
                if not allowed:
                    # acquire() refuses too, but applies the probe-timeout transition, so a
                    # half-open breaker whose probes died goes back to open.
                    _, _, retry, moved = agent_cell.acquire(
                        request.agent_breaker_key, now, request.agent_breaker
                    )
                    if agent_cell.state == BreakerState.OPEN:
                        open_until[request.agent_breaker_key] = agent_cell.open_until
                    return Admission(
                        "circuit_open", retry, None, False, False, tuple(moved), open_until
                    )
            wait = self._rate_check(request.rate_limits, now)
            if wait > 0:
                return Admission("rate_limited", wait, None, False, False)
            unknown = self._budget_unknown(request.budgets)
            if unknown:
                return Admission("budget_unknown", 0.0, None, False, False, unknown_budgets=unknown)
            if not self._budget_check(request.budgets, now):
                return Admission(
                    "budget_exceeded",
                    0.0,
                    None,
                    False,
                    False,
                    budget_remaining=self._budget_left(request.budgets, now),
                )
            # Dry run of the choice first so a refusal mutates nothing.
            dep, _, retry, had_capacity = self._select(
                now,
                request.lease_id,
                request.lease_ttl_s,
                request.candidates,
                request.deployment_breaker,
                transitions,
                open_until,
                commit=False,
            )
            if dep is None:
                if had_capacity:
                    # The committing pass cannot admit either (peek and acquire agree), but it
                    # applies due transitions and reports open_until for local rejection.
                    self._select(
                        now,
                        request.lease_id,
                        request.lease_ttl_s,
                        request.candidates,
                        request.deployment_breaker,
                        transitions,
                        open_until,
                        commit=True,
                    )
                reason: AdmitRefusal = "circuit_open" if had_capacity else "no_deployment"
                return Admission(reason, retry, None, False, False, tuple(transitions), open_until)
            agent_probe = False
            if agent_cell is not None and request.agent_breaker is not None:
                assert request.agent_breaker_key is not None
                _, agent_probe, _, moved = agent_cell.acquire(
                    request.agent_breaker_key, now, request.agent_breaker
                )
                transitions.extend(moved)
            dep, probe, retry, _ = self._select(
                now,
                request.lease_id,
                request.lease_ttl_s,
                request.candidates,
                request.deployment_breaker,
                transitions,
                open_until,
                commit=True,
            )
            self._rate_take(request.rate_limits, now, request.lease_id)
            remaining = self._budget_take(
                request.budgets, now, request.lease_id, request.lease_ttl_s
            )
            return Admission(
                None, 0.0, dep, agent_probe, probe, tuple(transitions), open_until, remaining
            )

    async def select(
        self,
        *,
        lease_id: str,
        lease_ttl_s: float,
        candidates: tuple[Candidate, ...],
        breaker: BreakerConfig,
    ) -> Selection:
        with self._lock:
            now = self._clock.now()
            transitions: list[Transition] = []
            open_until: dict[str, float] = {}
            dep, probe, retry, had_capacity = self._select(
                now,
                lease_id,
                lease_ttl_s,
                candidates,
                breaker,
                transitions,
                open_until,
                commit=True,
            )
            refusal: AdmitRefusal | None = None
            if dep is None:
                refusal = "circuit_open" if had_capacity else "no_deployment"
            return Selection(dep, probe, refusal, retry, tuple(transitions), open_until)

    async def complete(self, completion: Completion) -> tuple[Transition, ...]:
        with self._lock:
            now = self._clock.now()
            transitions: list[Transition] = []
            attempt = completion.attempt
            if attempt is not None:
                self._leases.get(attempt.deployment_id, {}).pop(attempt.lease_id, None)
                key = f"deployment:{attempt.deployment_id}"
                transitions += self._breaker(key).record(
                    key,
                    now,
                    completion.deployment_breaker,
                    attempt.outcome,
                    attempt.duration_s,
                    attempt.probe,
                )
            if (
                completion.agent_breaker_key is not None
                and completion.agent_breaker is not None
                and completion.agent_outcome is not None
            ):
                transitions += self._breaker(completion.agent_breaker_key).record(
                    completion.agent_breaker_key,
                    now,
                    completion.agent_breaker,
                    completion.agent_outcome,
                    completion.agent_duration_s,
                    completion.agent_probe,
                )
            for key, actual in completion.budget_settlements:
                self._budget(key).settle(completion.entry_id, actual)
            for key, window_s, cost in completion.rate_settlements:
                log = self._log(key)
                log.prune(now, window_s)
                log.settle(completion.entry_id, cost)
            return tuple(transitions)

    async def release(
        self, *, lease_id: str, deployment_id: int, probe: bool, breaker: BreakerConfig
    ) -> None:
        with self._lock:
            self._leases.get(deployment_id, {}).pop(lease_id, None)
            if probe:
                key = f"deployment:{deployment_id}"
                self._breaker(key).record(
                    key, self._clock.now(), breaker, Outcome.IGNORED, 0.0, True
                )

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

    async def budget_reserve(
        self, holds: tuple[BudgetHold, ...], entry_id: str, ttl_s: float
    ) -> tuple[bool, dict[str, int]]:
        with self._lock:
            now = self._clock.now()
            if not self._budget_check(holds, now):
                return False, self._budget_left(holds, now)
            return True, self._budget_take(holds, now, entry_id, ttl_s)

    async def budget_usage(self, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        with self._lock:
            now = self._clock.now()
            usage = {}
            for key in keys:
                cell = self._budget(key)
                reserved = cell.reserved(now)  # first: an expired reservation becomes spend
                usage[key] = (cell.spent, reserved)
            return usage

    async def budget_windows(self, keys: tuple[str, ...]) -> dict[str, BudgetWindow]:
        with self._lock:
            now = self._clock.now()
            windows = {}
            for key in keys:
                cell = self._budgets.get(key) or _Budget()
                reserved = cell.reserved(now)
                windows[key] = BudgetWindow(
                    cell.spent, reserved, cell.refused, cell.min_refused, cell.ready
                )
            return windows

    async def budget_prepare(self, windows: tuple[WindowInit, ...]) -> tuple[str, ...]:
        with self._lock:
            now = self._clock.now()
            written = []
            for init in windows:
                cell = self._budget(init.key)
                if cell.ready:
                    continue
                # A window this store held without knowing it complete (a settlement, a read)
                # keeps what it has where that is more: the rebuild never lowers spend.
                cell.spent = max(cell.spent, init.spent)
                for entry_id, amount, expires_at in init.reservations:
                    if entry_id in cell.orphans:  # settled while the window was gone
                        cell.spent += cell.orphans.pop(entry_id)
                    elif entry_id not in cell.reservations:
                        cell.reservations[entry_id] = (amount, expires_at)
                cell.reserved(now)  # the expired ones are spent
                cell.orphans.clear()
                cell.ready = True
                written.append(init.key)
            return tuple(written)

    async def abandon(self, request: Abandon) -> dict[str, int]:
        with self._lock:
            now = self._clock.now()
            held: dict[str, int] = {}
            if len(self._gone) > 10_000:  # tombstones are looked up by id only: prune them
                self._gone = {k: until for k, until in self._gone.items() if until > now}
            for lease_id in request.lease_ids:
                self._gone[lease_id] = now + request.tombstone_ttl_s
                for deployment_id in request.deployment_ids:
                    self._leases.get(deployment_id, {}).pop(lease_id, None)
                for key in request.rate_keys:
                    log = self._logs.get(key)
                    if log is not None:
                        log.remove(lease_id)
                for key in request.budget_keys:
                    cell = self._budgets.get(key)
                    if cell is None:
                        continue
                    cell.reserved(now)
                    reservation = cell.reservations.pop(lease_id, None)
                    if reservation is None:
                        continue
                    held[lease_id] = max(held.get(lease_id, 0), reservation[0])
                    if request.charge:
                        cell.spent += reservation[0]
            return held
