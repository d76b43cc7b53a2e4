"""Both state stores against small independent models, under Hypothesis' stateful testing.

The breaker model is a transcription of the state machine in ``agents/runtime/state.py``'s
docstring (keeping the window as a list of outcomes and recounting it, where the stores keep
running counters); where the docstring leaves a detail open it follows the documented choices
of ``MemoryState`` (the probe deadline is set when the breaker half-opens and is checked when
every probe slot is taken; retry-after values). The rate-limit model keeps every admitted
``(time, cost)`` and admits iff the cost in ``(now - window, now]`` plus the new cost fits. The
budget model keeps, per window, what was settled and every reservation with its expiry, and
admits iff ``spent + live reservations + amount <= limit`` for every hold (all or none).

Times are multiples of 0.25 s from an epoch-sized start, so every sum is exact in floating point
and the stores must agree with the models to the last bit. Hypothesis machines are synchronous:
each runs the store's coroutines on an event loop of its own, closed in teardown.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from agents.runtime.clock import FakeClock
from agents.runtime.memory import MemoryState
from agents.runtime.redis_state import RedisState
from agents.runtime.state import (
    Admission,
    AdmitRequest,
    BreakerAction,
    BreakerConfig,
    BreakerSnapshot,
    BreakerState,
    BudgetHold,
    Candidate,
    Completion,
    Outcome,
    RateLimit,
    StateStore,
    Transition,
    WindowInit,
)

T = TypeVar("T")
START = 1_700_000_000.0
KEY = "agent:model"
STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0, 30.0, 60.0])
EXAMPLES = {"memory": 200, "redis": 60}


class Harness:
    """A store on an event loop of its own; Redis gets a fresh key prefix per example."""

    def __init__(self, redis_url: str | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(START)
        self.prefix = f"bwtest:{uuid.uuid4().hex}"
        self.client: aioredis.Redis | None = None
        self.store: StateStore
        if redis_url is None:
            self.store = MemoryState(self.clock)
        else:
            self.client = self.run(self._connect(redis_url))
            self.store = RedisState(self.client, prefix=self.prefix, clock=self.clock)

    async def _connect(self, url: str) -> aioredis.Redis:
        return aioredis.Redis.from_url(url)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def _cleanup(self, client: aioredis.Redis) -> None:
        keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

    def close(self) -> None:
        try:
            if self.client is not None:
                self.run(self._cleanup(self.client))
        finally:
            self.loop.close()


# --- the breaker model ---


@dataclass
class BreakerModel:
    cfg: BreakerConfig
    mode: str = "auto"  # or an operator mode: forced_open, forced_closed, disabled
    state: BreakerState = BreakerState.CLOSED  # the automatic state under the mode
    outcomes: list[tuple[bool, bool]] = field(default_factory=list)  # (failed, slow), oldest first
    streak: int = 0
    open_until: float = 0.0
    probes_issued: int = 0
    probes_ok: int = 0
    probe_deadline: float = 0.0

    def shown(self) -> BreakerState:
        return BreakerState(self.mode) if self.mode != "auto" else self.state

    def _to(self, to: BreakerState, now: float, reason: str) -> Transition:
        before, self.state = self.state, to
        if to is not BreakerState.HALF_OPEN:
            self.outcomes, self.streak = [], 0
        self.probes_issued = self.probes_ok = 0
        if to is BreakerState.OPEN:
            self.open_until = now + self.cfg.recovery_timeout_s
        elif to is BreakerState.CLOSED:
            self.open_until = 0.0
        else:
            self.probe_deadline = now + self.cfg.probe_timeout_s
        return Transition(KEY, before, to, now, reason)

    def acquire(self, now: float) -> tuple[bool, bool, float, tuple[Transition, ...]]:
        if self.mode == "forced_open":
            return False, False, self.cfg.recovery_timeout_s, ()
        if self.mode != "auto":
            return True, False, 0.0, ()
        moved: list[Transition] = []
        if self.state is BreakerState.OPEN:
            if now < self.open_until:
                return False, False, self.open_until - now, ()
            moved.append(self._to(BreakerState.HALF_OPEN, now, "recovery timeout"))
        if self.state is BreakerState.HALF_OPEN:
            if self.probes_issued < self.cfg.half_open_max_calls:
                self.probes_issued += 1
                return True, True, 0.0, tuple(moved)
            if now < self.probe_deadline:
                return False, False, self.probe_deadline - now, tuple(moved)
            moved.append(self._to(BreakerState.OPEN, now, "half-open probes timed out"))
            return False, False, self.cfg.recovery_timeout_s, tuple(moved)
        return True, False, 0.0, tuple(moved)

    def record(
        self, now: float, outcome: Outcome, duration_s: float, probe: bool
    ) -> tuple[Transition, ...]:
        cfg = self.cfg
        if self.mode in ("forced_open", "disabled"):
            return ()
        if probe and self.mode == "auto" and self.state is BreakerState.HALF_OPEN:
            if outcome is Outcome.FAILURE:
                return (self._to(BreakerState.OPEN, now, "half-open probe failed"),)
            if outcome is Outcome.IGNORED:
                self.probes_issued = max(0, self.probes_issued - 1)
                return ()
            self.probes_ok += 1
            if self.probes_ok >= cfg.half_open_max_calls:
                return (self._to(BreakerState.CLOSED, now, "half-open probes succeeded"),)
            return ()
        if self.shown() not in (BreakerState.CLOSED, BreakerState.FORCED_CLOSED):
            return ()
        if outcome is Outcome.IGNORED:
            return ()
        failed = outcome is Outcome.FAILURE
        slow = cfg.slow_call_s is not None and duration_s > cfg.slow_call_s
        self.streak = self.streak + 1 if failed else 0
        self.outcomes = [*self.outcomes, (failed, slow)]
        if len(self.outcomes) > cfg.window_size:
            self.outcomes = self.outcomes[1:]
        if self.mode != "auto":
            return ()
        calls = len(self.outcomes)
        failures = sum(f for f, _ in self.outcomes)
        slows = sum(s for _, s in self.outcomes)
        if self.streak >= cfg.failure_threshold:
            reason = f"{self.streak} consecutive failures"
        elif calls >= cfg.minimum_calls and failures / calls >= cfg.failure_rate_threshold:
            reason = f"failure rate {failures}/{calls}"
        elif (
            calls >= cfg.minimum_calls
            and cfg.slow_call_s is not None
            and slows / calls >= cfg.slow_call_rate_threshold
        ):
            reason = f"slow-call rate {slows}/{calls}"
        else:
            return ()
        return (self._to(BreakerState.OPEN, now, reason),)

    def command(self, now: float, action: BreakerAction) -> tuple[Transition, ...]:
        before = self.shown()
        if action == "reset":
            self.mode = "auto"
            self.state = BreakerState.CLOSED
            self.outcomes, self.streak, self.open_until = [], 0, 0.0
            self.probes_issued = self.probes_ok = 0
        else:
            self.mode = {
                "force_open": "forced_open",
                "force_close": "forced_closed",
                "disable": "disabled",
            }[action]
        after = self.shown()
        return (
            () if before == after else (Transition(KEY, before, after, now, f"operator {action}"),)
        )

    def snapshot(self, now: float) -> BreakerSnapshot:
        shown = self.shown()
        probes = self.probes_issued - self.probes_ok if shown is BreakerState.HALF_OPEN else 0
        if shown is BreakerState.OPEN and self.open_until <= now:
            shown, probes = BreakerState.HALF_OPEN, 0  # probe-able: the next acquire moves it
        return BreakerSnapshot(
            key=KEY,
            state=shown,
            consecutive_failures=self.streak,
            window_calls=len(self.outcomes),
            window_failures=sum(f for f, _ in self.outcomes),
            window_slow=sum(s for _, s in self.outcomes),
            open_until=self.open_until if shown is BreakerState.OPEN else None,
            probes_in_flight=probes,
        )


# successes weigh double, so that windows fill up before the breaker opens
OUTCOMES = st.sampled_from([Outcome.SUCCESS, Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED])
DURATIONS = st.sampled_from([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 6),
    recovery_timeout_s=st.sampled_from([1.0, 2.5, 10.0, 60.0]),
    half_open_max_calls=st.integers(1, 3),
    window_size=st.integers(1, 6),
    minimum_calls=st.integers(1, 8),
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    slow_call_s=st.sampled_from([None, 1.0, 2.0]),
    slow_call_rate_threshold=st.sampled_from([0.5, 1.0]),
    probe_timeout_s=st.sampled_from([1.0, 5.0, 30.0]),
)


class BreakerMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str | None] = None  # set on a subclass per backend: see on()

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(self.redis_url)
        self.model = BreakerModel(BreakerConfig())

    def teardown(self) -> None:
        self.h.close()

    @property
    def now(self) -> float:
        return self.h.clock.now()

    @initialize(cfg=configs)
    def configure(self, cfg: BreakerConfig) -> None:
        self.model = BreakerModel(cfg)

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    @precondition(
        lambda self: self.model.open_until > self.now or self.model.probe_deadline > self.now
    )
    @rule(which=st.sampled_from(["open_until", "probe_deadline"]), early=st.booleans())
    def advance_to_a_boundary(self, which: str, early: bool) -> None:
        target = getattr(self.model, which) - (0.25 if early else 0.0)
        if target > self.now:
            self.h.clock.advance(target - self.now)

    @rule()
    def acquire(self) -> None:
        got = self.h.run(self.h.store.breaker_acquire(KEY, self.model.cfg))
        assert got == self.model.acquire(self.now)

    @rule(calls=st.lists(st.tuples(OUTCOMES, DURATIONS, st.booleans()), min_size=1, max_size=6))
    def record_several(self, calls: list[tuple[Outcome, float, bool]]) -> None:
        for outcome, duration_s, probe in calls:
            self.record(outcome, duration_s, probe)

    def record(self, outcome: Outcome, duration_s: float, probe: bool) -> None:
        got = self.h.run(
            self.h.store.breaker_record(KEY, self.model.cfg, outcome, duration_s, probe)
        )
        assert got == self.model.record(self.now, outcome, duration_s, probe)

    @precondition(
        lambda self: self.model.mode == "auto" and self.model.state is BreakerState.CLOSED
    )
    @rule()
    def trip(self) -> None:
        """Failures until it opens: reaching open and half-open by chance alone is rare."""
        for _ in range(self.model.cfg.failure_threshold):
            self.record(Outcome.FAILURE, 0.5, probe=False)

    @precondition(lambda self: self.model.mode == "auto" and self.model.state is BreakerState.OPEN)
    @rule()
    def recover(self) -> None:
        """Wait out the recovery time exactly, then acquire (the first probe)."""
        if self.model.open_until > self.now:
            self.h.clock.advance(self.model.open_until - self.now)
        self.acquire()

    @precondition(
        lambda self: self.model.mode == "auto" and self.model.state is BreakerState.HALF_OPEN
    )
    @rule(early=st.booleans())
    def let_the_probes_time_out(self, early: bool) -> None:
        """Take every probe slot, then acquire at (or just before) the probe deadline."""
        while self.model.state is BreakerState.HALF_OPEN and (
            self.model.probes_issued < self.model.cfg.half_open_max_calls
        ):
            self.acquire()
        target = self.model.probe_deadline - (0.25 if early else 0.0)
        if target > self.now:
            self.h.clock.advance(target - self.now)
        self.acquire()

    @precondition(
        lambda self: self.model.mode == "auto" and self.model.state is BreakerState.HALF_OPEN
    )
    @rule(outcome=st.sampled_from(Outcome), duration_s=DURATIONS)
    def answer_a_probe(self, outcome: Outcome, duration_s: float) -> None:
        self.record(outcome, duration_s, probe=True)

    # reset is the only way back to automatic mode: drawn as often as the three overrides
    @rule(
        action=st.sampled_from(["reset", "reset", "reset", "force_open", "force_close", "disable"])
    )
    def command(self, action: BreakerAction) -> None:
        got = self.h.run(self.h.store.breaker_command(KEY, action))
        assert got == self.model.command(self.now, action)

    @invariant()
    def snapshots_agree(self) -> None:
        got = self.h.run(self.h.store.breaker_snapshot(KEY, self.model.cfg))
        assert got == self.model.snapshot(self.now)


# --- the rate-limit model ---


@dataclass
class Admitted:
    at: float
    key: str
    entry_id: str
    cost: int


@dataclass
class RateModel:
    log: list[Admitted] = field(default_factory=list)  # everything ever admitted

    def live(self, key: str, window_s: float, now: float) -> list[Admitted]:
        return [e for e in self.log if e.key == key and now - window_s < e.at]

    def wait(self, limit: RateLimit, now: float) -> float:
        """Seconds until ``limit.cost`` fits, entries expiring ``window_s`` after admission."""
        if limit.cost > limit.limit:
            return math.inf
        live = self.live(limit.key, limit.window_s, now)
        for expiry in sorted({e.at + limit.window_s for e in live}):
            if (
                sum(e.cost for e in live if e.at + limit.window_s > expiry) + limit.cost
                <= limit.limit
            ):
                return expiry - now
        raise AssertionError("unreachable: the cost fits once everything has expired")

    def acquire(
        self, limits: tuple[RateLimit, ...], entry_id: str, now: float
    ) -> tuple[bool, float]:
        waits = [
            self.wait(lim, now)
            for lim in limits
            if sum(e.cost for e in self.live(lim.key, lim.window_s, now)) + lim.cost > lim.limit
        ]
        if waits:
            return False, max(waits)
        self.log += [Admitted(now, lim.key, entry_id, lim.cost) for lim in limits]
        return True, 0.0

    def settle(self, key: str, window_s: float, entry_id: str, cost: int, now: float) -> None:
        for entry in self.live(key, window_s, now):
            if entry.entry_id == entry_id:
                entry.cost = cost


class RateMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str | None] = None  # set on a subclass per backend: see on()

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(self.redis_url)
        self.model = RateModel()
        self.windows = {"rpm": 60.0, "tpm": 30.0}
        self.limits = {"rpm": 5, "tpm": 100}
        self.entries = 0

    def teardown(self) -> None:
        self.h.close()

    @property
    def now(self) -> float:
        return self.h.clock.now()

    @initialize(
        rpm=st.tuples(st.integers(1, 6), st.sampled_from([5.0, 10.0, 60.0])),
        tpm=st.tuples(st.integers(20, 120), st.sampled_from([2.5, 10.0, 30.0])),
    )
    def configure(self, rpm: tuple[int, float], tpm: tuple[int, float]) -> None:
        self.limits["rpm"], self.windows["rpm"] = rpm
        self.limits["tpm"], self.windows["tpm"] = tpm

    def limit(self, key: str, cost: int) -> RateLimit:
        return RateLimit(key, self.limits[key], self.windows[key], cost)

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    def expiries(self) -> list[float]:
        return sorted(
            {
                e.at + self.windows[e.key]
                for e in self.model.log
                if e.at + self.windows[e.key] > self.now
            }
        )

    @precondition(lambda self: bool(self.expiries()))
    @rule(data=st.data(), early=st.booleans())
    def advance_to_an_expiry(self, data: st.DataObject, early: bool) -> None:
        target = data.draw(st.sampled_from(self.expiries())) - (0.25 if early else 0.0)
        if target > self.now:
            self.h.clock.advance(target - self.now)

    @rule(
        keys=st.sampled_from([("rpm",), ("tpm",), ("rpm", "tpm")]),
        rpm_cost=st.integers(0, 3),
        tpm_cost=st.sampled_from([0, 1, 10, 25, 40, 60, 100, 130]),
    )
    def acquire(self, keys: tuple[str, ...], rpm_cost: int, tpm_cost: int) -> None:
        costs = {"rpm": rpm_cost, "tpm": tpm_cost}
        limits = tuple(self.limit(key, costs[key]) for key in keys)
        self.entries += 1
        entry_id = f"exec-{self.entries}"
        got = self.h.run(self.h.store.rate_acquire(limits, entry_id))
        assert got == self.model.acquire(limits, entry_id, self.now)

    @rule(key=st.sampled_from(["rpm", "tpm"]))
    def fill(self, key: str) -> None:
        """Ask for exactly what is left (or one more), so boundaries decide admissions."""
        limit = self.limit(key, 0)
        used = sum(e.cost for e in self.model.live(key, limit.window_s, self.now))
        self.acquire((key,), max(1, limit.limit - used), max(1, limit.limit - used))

    @precondition(lambda self: bool(self.model.log))
    @rule(
        data=st.data(),
        keys=st.sampled_from([("tpm",), ("rpm",), ("rpm", "tpm")]),
        cost=st.sampled_from([0, 1, 5, 30, 80, 200]),
    )
    def settle(self, data: st.DataObject, keys: tuple[str, ...], cost: int) -> None:
        entry_id = data.draw(st.sampled_from(sorted({e.entry_id for e in self.model.log})))
        settlements = tuple((key, self.windows[key], cost) for key in keys)
        self.h.run(
            self.h.store.complete(
                Completion(
                    attempt=None,
                    deployment_breaker=BreakerConfig(),
                    entry_id=entry_id,
                    rate_settlements=settlements,
                )
            )
        )
        for key, window_s, settled in settlements:
            self.model.settle(key, window_s, entry_id, settled, self.now)


# --- the budget model ---


@dataclass
class BudgetWindow:
    spent: int = 0
    reservations: dict[str, tuple[int, float]] = field(default_factory=dict)  # id: amount, expiry

    def prune(self, now: float) -> None:
        """An expired reservation is spent: its process never said what it spent."""
        for entry_id, (amount, expiry) in list(self.reservations.items()):
            if expiry <= now:
                del self.reservations[entry_id]
                self.spent += amount

    def reserved(self, now: float) -> int:
        self.prune(now)
        return sum(amount for amount, _ in self.reservations.values())

    def held(self, entry_id: str, now: float) -> int:
        self.prune(now)
        return self.reservations.get(entry_id, (0, now))[0]


@dataclass
class BudgetModel:
    windows: dict[str, BudgetWindow] = field(default_factory=dict)

    def window(self, key: str, now: float) -> BudgetWindow:
        window = self.windows.setdefault(key, BudgetWindow())
        window.prune(now)
        return window

    def left(self, holds: tuple[BudgetHold, ...], now: float) -> dict[str, int]:
        return {
            h.key: h.limit - self.window(h.key, now).spent - self.window(h.key, now).reserved(now)
            for h in holds
        }

    def reserve(
        self, holds: tuple[BudgetHold, ...], entry_id: str, ttl_s: float, now: float
    ) -> tuple[bool, dict[str, int]]:
        if any(
            self.window(h.key, now).spent + self.window(h.key, now).reserved(now) + h.amount
            > h.limit
            for h in holds
        ):
            return False, self.left(holds, now)
        for h in holds:
            window = self.window(h.key, now)
            window.reservations[entry_id] = (window.held(entry_id, now) + h.amount, now + ttl_s)
        return True, self.left(holds, now)

    def settle(self, key: str, entry_id: str, actual: int, now: float) -> None:
        """Only a live reservation settles: a settlement sent again, or after the reservation
        expired into spend, changes nothing."""
        window = self.window(key, now)
        if window.reservations.pop(entry_id, None) is not None:
            window.spent += max(0, actual)


BUDGET_KEYS = ("budget:1:2026-11-28", "budget:2:2026-11-28")
TTLS = st.sampled_from([1.0, 2.5, 10.0, 30.0])
# Large scales check that Lua's doubles keep micro-USD exact up to a $100M limit.
SCALES = st.sampled_from([1, 1, 7, 49_999_999_937])
KEY_SETS = st.sampled_from([(0,), (1,), (0, 1), (1, 0)])
OPEN = BreakerConfig(failure_threshold=1_000_000, minimum_calls=1_000_000)


class BudgetMachine(RuleBasedStateMachine):
    redis_url: ClassVar[str | None] = None  # set on a subclass per backend: see on()

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(self.redis_url)
        self.model = BudgetModel()
        self.scale = 1
        self.limits = [1_000, 1_000]
        self.entries: list[str] = []

    def teardown(self) -> None:
        self.h.close()

    @property
    def now(self) -> float:
        return self.h.clock.now()

    @initialize(scale=SCALES, limits=st.tuples(st.integers(0, 2_000), st.integers(0, 2_000)))
    def configure(self, scale: int, limits: tuple[int, int]) -> None:
        self.scale = scale
        self.limits = [limit * scale for limit in limits]
        # Admission counts against known windows only: these start empty.
        self.h.run(
            self.h.store.budget_prepare(tuple(WindowInit(k, 0, 86_400.0) for k in BUDGET_KEYS))
        )

    def holds(self, which: tuple[int, ...], amounts: list[int]) -> tuple[BudgetHold, ...]:
        return tuple(
            BudgetHold(BUDGET_KEYS[i], self.limits[i], amount, 86_400.0)
            for i, amount in zip(which, amounts, strict=False)
        )

    def admit(self, holds: tuple[BudgetHold, ...], ttl_s: float, rate_blocked: bool) -> None:
        entry_id = f"exec-{len(self.entries)}"
        self.entries.append(entry_id)
        blocked = (RateLimit("rpm:blocked", 0, 60.0, 1),) if rate_blocked else ()
        got = self.h.run(
            self.h.store.admit(
                AdmitRequest(
                    lease_id=entry_id,
                    lease_ttl_s=ttl_s,
                    agent_breaker_key=None,
                    agent_breaker=None,
                    rate_limits=blocked,
                    candidates=(Candidate(1, 1_000_000),),
                    deployment_breaker=OPEN,
                    budgets=holds,
                )
            )
        )
        if rate_blocked:
            expected = Admission("rate_limited", math.inf, None, False, False)
        else:
            ok, left = self.model.reserve(holds, entry_id, ttl_s, self.now)
            expected = (
                Admission(None, 0.0, 1, False, False, budget_remaining=left)
                if ok
                else Admission("budget_exceeded", 0.0, None, False, False, budget_remaining=left)
            )
        assert got == expected

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.h.clock.advance(seconds)

    def live(self, entry_id: str) -> bool:
        return any(w.held(entry_id, self.now) for w in self.model.windows.values())

    def expiries(self) -> list[float]:
        return sorted(
            {
                expiry
                for window in self.model.windows.values()
                for _, expiry in window.reservations.values()
                if expiry > self.now
            }
        )

    @precondition(lambda self: bool(self.expiries()))
    @rule(data=st.data(), early=st.booleans())
    def advance_to_an_expiry(self, data: st.DataObject, early: bool) -> None:
        target = data.draw(st.sampled_from(self.expiries())) - (0.25 if early else 0.0)
        if target > self.now:
            self.h.clock.advance(target - self.now)

    @rule(
        which=KEY_SETS,
        amounts=st.lists(st.integers(0, 800), min_size=2, max_size=2),
        limits=st.one_of(st.none(), st.tuples(st.integers(0, 2_000), st.integers(0, 2_000))),
        ttl_s=TTLS,
        rate_blocked=st.sampled_from([False, False, False, True]),
    )
    def admit_some(
        self,
        which: tuple[int, ...],
        amounts: list[int],
        limits: tuple[int, int] | None,
        ttl_s: float,
        rate_blocked: bool,
    ) -> None:
        if limits is not None:  # an operator raised, lowered or paused the budgets
            self.limits = [limit * self.scale for limit in limits]
        self.admit(self.holds(which, [a * self.scale for a in amounts]), ttl_s, rate_blocked)

    @rule(which=KEY_SETS, over=st.sampled_from([-1, 0, 0, 1]), ttl_s=TTLS)
    def fill(self, which: tuple[int, ...], over: int, ttl_s: float) -> None:
        """Ask for exactly what is left of the first budget (or one micro-USD more or less)."""
        window = self.model.window(BUDGET_KEYS[which[0]], self.now)
        left = self.limits[which[0]] - window.spent - window.reserved(self.now)
        amount = max(0, left + over)
        self.admit(self.holds(which, [amount, amount]), ttl_s, rate_blocked=False)

    @precondition(lambda self: bool(self.entries))
    @rule(
        data=st.data(),
        which=KEY_SETS,
        amounts=st.lists(st.integers(0, 400), min_size=2, max_size=2),
        ttl_s=TTLS,
    )
    def top_up(
        self, data: st.DataObject, which: tuple[int, ...], amounts: list[int], ttl_s: float
    ) -> None:
        live = [e for e in self.entries if self.live(e)]
        prefer_live: bool = data.draw(st.booleans())
        entry_id = data.draw(st.sampled_from(live if live and prefer_live else self.entries))
        holds = self.holds(which, [a * self.scale for a in amounts])
        got = self.h.run(self.h.store.budget_reserve(holds, entry_id, ttl_s))
        assert got == self.model.reserve(holds, entry_id, ttl_s, self.now)

    @precondition(lambda self: bool(self.entries))
    @rule(data=st.data(), which=KEY_SETS)
    def settle(self, data: st.DataObject, which: tuple[int, ...]) -> None:
        """Settle an entry (live, expired or settled already) at most what it reserved."""
        entry_id = data.draw(st.sampled_from(self.entries))
        settlements = []
        for i in which:
            amount = self.model.window(BUDGET_KEYS[i], self.now).held(entry_id, self.now)
            settlements.append((BUDGET_KEYS[i], data.draw(st.integers(0, amount))))
        self.h.run(
            self.h.store.complete(
                Completion(
                    attempt=None,
                    deployment_breaker=OPEN,
                    entry_id=entry_id,
                    budget_settlements=tuple(settlements),
                )
            )
        )
        for key, actual in settlements:
            self.model.settle(key, entry_id, actual, self.now)

    @invariant()
    def usage_agrees(self) -> None:
        got = self.h.run(self.h.store.budget_usage(BUDGET_KEYS))
        assert got == {
            key: (
                self.model.window(key, self.now).spent,
                self.model.window(key, self.now).reserved(self.now),
            )
            for key in BUDGET_KEYS
        }


M = TypeVar("M", bound=RuleBasedStateMachine)


def on(machine: type[M], redis_url: str | None) -> type[M]:
    """The machine bound to a backend: MemoryState when ``redis_url`` is None."""
    return type(machine.__name__, (machine,), {"redis_url": redis_url})


def _settings(backend: str) -> settings:
    return settings(
        max_examples=EXAMPLES[backend],
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


@pytest.fixture(params=["memory", "redis"])
def backend_url(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    if request.param == "memory":
        return "memory", None
    return "redis", request.getfixturevalue("redis_url")


def test_the_breaker_agrees_with_its_model(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    run_state_machine_as_test(on(BreakerMachine, url), settings=_settings(backend))


def test_the_rate_limiter_agrees_with_its_model(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    run_state_machine_as_test(on(RateMachine, url), settings=_settings(backend))


def test_budgets_agree_with_their_model(backend_url: tuple[str, str | None]) -> None:
    backend, url = backend_url
    run_state_machine_as_test(on(BudgetMachine, url), settings=_settings(backend))
