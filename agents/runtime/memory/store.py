"""The :class:`MemoryState` itself: the lock, the tables, and the composite calls.

The composite calls (admit, select, complete, release, abandon) touch several aggregates at
once; each runs under the one lock, like every primitive of the mixins it is made of.
"""

from __future__ import annotations

import math
import threading

from agents.runtime.clock import Clock, SystemClock
from agents.runtime.memory.breakers import BreakerCalls
from agents.runtime.memory.budgets import BudgetCalls
from agents.runtime.memory.limits import LimitCalls
from agents.runtime.state import (
    Abandon,
    Admission,
    AdmitRefusal,
    AdmitRequest,
    BreakerConfig,
    BreakerState,
    Candidate,
    Completion,
    Outcome,
    Selection,
    Transition,
)

_HEX = frozenset("0123456789abcdefABCDEF")


def spread(lease_id: str) -> float:
    """A number in [0, 1) read from the lease id's first 8 hex digits (lease ids are execution
    ids, random UUIDs); 0 for ids that do not start so. The same in both stores (lib.lua)."""
    head = lease_id[:8]
    if len(head) == 8 and all(ch in _HEX for ch in head):
        return int(head, 16) / 4294967296
    return 0.0


class MemoryState(BreakerCalls, LimitCalls, BudgetCalls):
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        # The tables of the mixins (typed there), all behind this one lock.
        self._breakers = {}
        self._logs = {}
        self._leases = {}
        self._budgets = {}
        self._gone: dict[str, float] = {}  # abandoned lease id -> until when it stays gone

    # --- helpers (call with the lock held) ---

    def _is_gone(self, lease_id: str, now: float) -> bool:
        until = self._gone.get(lease_id)
        if until is None:
            return False
        if until <= now:
            del self._gone[lease_id]
            return False
        return True

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
        if request.record is not None:
            raise ValueError("MemoryState cannot append to a Redis stream: record must be None")
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

    async def abandon(self, request: Abandon) -> dict[str, int]:
        with self._lock:
            now = self._clock.now()
            held: dict[str, int] = {}
            if len(self._gone) > 10_000:  # tombstones are looked up by id only: prune them
                self._gone = {k: until for k, until in self._gone.items() if until > now}
            for lease_id in request.lease_ids:
                if request.tombstone_ttl_s > 0:
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
