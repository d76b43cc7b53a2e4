"""The shared hot-state port: circuit breakers, rate limits and in-flight leases.

Two implementations pass one test suite: :class:`agents.runtime.memory.MemoryState` (one process,
embedded mode) and :class:`agents.runtime.redis_state.RedisState` (atomic Lua scripts, time from
Redis ``TIME``, distributed mode). The runtime talks to the port through two composite calls so
that an execution costs one round trip before the provider call (:meth:`StateStore.admit`) and
one after (:meth:`StateStore.complete`); the primitive calls exist for operators and tests.

Breaker state machine (per key; an agent or a model deployment)::

    closed --(threshold consecutive failures, or failure/slow rate over the window)--> open
    open --(recovery_timeout_s elapsed, on the next acquire)--> half_open
    half_open --(half_open_max_calls probes, all succeed)--> closed
    half_open --(a probe fails, or probes give no answer within probe_timeout_s)--> open

Operator modes override it: ``forced_open`` rejects everything, ``forced_closed`` admits
everything (outcomes are still counted, it never opens), ``disabled`` admits and counts nothing.
``reset`` returns to automatic ``closed`` with clean counters.

Rate limits are exact sliding windows (a log of admitted costs): within any interval of length
``window_s`` the admitted cost never exceeds ``limit``, so there is no 2x burst at a window edge.
In-flight counts are leases that expire, so a process that dies leaks nothing for long.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"
    DISABLED = "disabled"


# Prometheus gauge values (docs/INTERFACES.md §5): 0 closed, 1 half-open, 2 open.
BREAKER_GAUGE: dict[BreakerState, int] = {
    BreakerState.CLOSED: 0,
    BreakerState.FORCED_CLOSED: 0,
    BreakerState.DISABLED: 0,
    BreakerState.HALF_OPEN: 1,
    BreakerState.OPEN: 2,
    BreakerState.FORCED_OPEN: 2,
}

BreakerAction = Literal["force_open", "force_close", "reset", "disable"]


class Outcome(enum.IntEnum):
    """What a finished call means to a breaker."""

    SUCCESS = 0
    FAILURE = 1
    IGNORED = 2  # e.g. a client error: neither the provider's success nor its failure


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5
    recovery_timeout_s: float = 60.0
    half_open_max_calls: int = 1
    window_size: int = 20
    minimum_calls: int = 10
    failure_rate_threshold: float = 0.5  # open when failures/calls >= this (window full enough)
    slow_call_s: float | None = None  # a call slower than this is "slow"
    slow_call_rate_threshold: float = 1.0  # open when slow/calls >= this
    probe_timeout_s: float = 60.0  # a half-open probe with no answer by then counts as failed


@dataclass(frozen=True)
class Transition:
    key: str
    from_state: BreakerState
    to_state: BreakerState
    at: float
    reason: str


@dataclass(frozen=True)
class BreakerSnapshot:
    key: str
    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow: int
    open_until: float | None
    probes_in_flight: int


@dataclass(frozen=True)
class RateLimit:
    """Admit ``cost`` against ``limit`` per ``window_s`` on ``key`` (requests or tokens)."""

    key: str
    limit: int
    window_s: float
    cost: int


@dataclass(frozen=True)
class Candidate:
    """One deployment of the logical model being tried."""

    deployment_id: int
    max_concurrency: int
    weight: int = 1

    @property
    def breaker_key(self) -> str:
        return deployment_breaker_key(self.deployment_id)


def agent_breaker_key(agent: str) -> str:
    return f"agent:{agent}"


def deployment_breaker_key(deployment_id: int) -> str:
    return f"deployment:{deployment_id}"


AdmitRefusal = Literal[
    "circuit_open", "rate_limited", "no_deployment", "budget_exceeded", "budget_unknown", "late"
]


class DependencyUnavailable(Exception):
    """A dependency every execution needs did not answer: the execution is refused with a
    typed 503 (``error.type`` = :attr:`kind`) instead of failing with an untyped error."""

    kind = "unavailable"


class StateUnavailable(DependencyUnavailable):
    """The shared state did not answer (Redis down, stalled past the command timeout, or a
    budget window that could not be rebuilt): nothing can be admitted."""

    kind = "state_unavailable"


class BudgetsUnavailable(DependencyUnavailable):
    """A budget window the store does not know could not be rebuilt from the durable ledger
    (the database is unreachable): budgets fail closed, nothing under them is admitted."""

    kind = "budgets_unavailable"


class RecordingUnavailable(DependencyUnavailable):
    """The journal could not make an event durable (Redis down, a full disk): nothing is sent
    upstream that could not be recorded."""

    kind = "recording_unavailable"


@dataclass(frozen=True)
class BudgetHold:
    """Reserve ``amount`` micro-USD against budget window ``key`` whose limit is ``limit``.

    A window's counter holds what was settled (spent) and the live reservations, each named by
    an execution and expiring with its lease. A reservation is money that may have been spent
    upstream: it becomes spend when its execution settles (the actual cost) or when it expires
    (its whole amount: the process that held it never said what it spent). Admission succeeds
    only if ``spent + reserved + amount <= limit`` for every hold, and only on a window the
    store knows to be complete (:meth:`StateStore.budget_prepare`): a window that is missing
    (a new window, a restart, a Redis that lost its data or evicted the key) is refused as
    ``budget_unknown`` until it has been rebuilt from the durable ledger.
    """

    key: str  # "budget:<id>:<window>", e.g. budget:3:2026-11-28
    limit: int  # micro-USD, the effective limit (temporary raise included); 0 when paused
    amount: int  # micro-USD, the worst case of the next provider call
    ttl_s: float  # how long the window's counter must live (until the window ends, plus slack)


@dataclass(frozen=True)
class StreamRecord:
    """An entry appended to a Redis stream by the admission that admits, in the same atomic
    step (``AdmitRequest.record``): the journal's ``started`` event, so that no reservation is
    ever held without the record that lets a dead process's execution be found and charged."""

    stream: str  # the stream's key
    maxlen: int  # trimmed to about this many entries (MAXLEN ~)
    field: str
    value: bytes


@dataclass(frozen=True)
class AdmitRequest:
    lease_id: str  # unique per execution; names its in-flight lease and rate-log entries
    lease_ttl_s: float  # the lease outlives the execution's deadline, then expires by itself
    agent_breaker_key: str | None
    agent_breaker: BreakerConfig | None
    rate_limits: tuple[RateLimit, ...]
    candidates: tuple[Candidate, ...]
    deployment_breaker: BreakerConfig
    budgets: tuple[BudgetHold, ...] = ()
    # Where a cached answer to this request may be (ResponseCache.admission_key): when set and
    # an answer is there, admission takes nothing and returns it (Admission.cached), so that a
    # miss costs no round trip of its own. Only for a store that can read the cache
    # (RedisState with a RedisCache on the same Redis); MemoryState refuses it.
    cache_key: str | None = None
    # Appended when (and only when) this admission admits, atomically with what it takes; its
    # entry id comes back as Admission.record_id. Only for a store on the journal's Redis
    # (RedisState with a RedisJournal on the same server); MemoryState refuses it.
    record: StreamRecord | None = None


@dataclass(frozen=True)
class Admission:
    refusal: AdmitRefusal | None
    retry_after: float  # seconds; meaningful when refused
    deployment_id: int | None
    agent_probe: bool
    deployment_probe: bool
    transitions: tuple[Transition, ...] = ()
    # Open-until times learned on the way (key -> epoch seconds): lets a process reject calls
    # to an open breaker locally, without a round trip, until then.
    open_until: dict[str, float] = field(default_factory=dict)
    # Budget key -> micro-USD left after this admission (limit - spent - reserved).
    budget_remaining: dict[str, int] = field(default_factory=dict)
    # The raw cached answer found under AdmitRequest.cache_key: nothing was admitted.
    cached: bytes | None = None
    # Refused as budget_unknown: the hold keys whose windows the store does not know.
    unknown_budgets: tuple[str, ...] = ()
    # The stream entry id of AdmitRequest.record, written because this admission admitted.
    record_id: bytes | None = None

    @property
    def ok(self) -> bool:
        """Admitted: a call may go out (not refused, and no cached answer came back instead)."""
        return self.refusal is None and self.cached is None


@dataclass(frozen=True)
class Selection:
    """A deployment chosen (with its lease taken) for one attempt, or why none was."""

    deployment_id: int | None
    probe: bool
    refusal: AdmitRefusal | None
    retry_after: float
    transitions: tuple[Transition, ...] = ()
    open_until: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptResult:
    deployment_id: int
    lease_id: str
    outcome: Outcome
    duration_s: float
    probe: bool


@dataclass(frozen=True)
class Completion:
    attempt: AttemptResult | None
    deployment_breaker: BreakerConfig
    agent_breaker_key: str | None = None
    agent_breaker: BreakerConfig | None = None
    agent_outcome: Outcome | None = None
    agent_duration_s: float = 0.0
    agent_probe: bool = False
    # (rate-limit key, window_s, actual cost): settle what admission reserved under ``entry_id``
    # (the admission's ``lease_id``), e.g. real token usage in place of the estimate.
    entry_id: str = ""
    rate_settlements: tuple[tuple[str, float, int], ...] = ()
    # (budget key, actual micro-USD): the reservation under ``entry_id`` becomes spend.
    budget_settlements: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class BudgetWindow:
    """A budget window as the store holds it (micro-USD)."""

    spent: int
    reserved: int
    refused: int = 0  # admissions and top-ups refused for this budget in the window
    min_refused: int = 0  # the smallest amount refused (0: none): what it can no longer admit
    ready: bool = True  # False: the store does not know this window (see BudgetHold)


@dataclass(frozen=True)
class WindowInit:
    """A budget window rebuilt from the durable record: ``spent`` micro-USD settled so far, and
    the reservations of executions still running (``(entry_id, amount, expires_at epoch s)``;
    one already expired counts as spent, as it would have in the store)."""

    key: str
    spent: int
    ttl_s: float
    reservations: tuple[tuple[str, int, float], ...] = ()


@dataclass(frozen=True)
class Abandon:
    """Executions whose callers will never settle them: a process that died, or an admission
    whose reply never came back (its caller was answered 503 meanwhile).

    Their leases on ``deployment_ids`` are dropped and their rate-log entries on ``rate_keys``
    removed. Their reservations on ``budget_keys`` become spend when ``charge`` (the work may
    have gone upstream: charged at the reservation, its usage being unknown), or are dropped
    otherwise (nothing was sent). Each lease id is marked gone for ``tombstone_ttl_s``: an
    admission under it that reaches the store later (stuck behind a stall) takes nothing. With
    ``tombstone_ttl_s`` 0 it is not marked: its execution runs again under the same id (a queued
    execution requeued after its worker died)."""

    lease_ids: tuple[str, ...]
    deployment_ids: tuple[int, ...]
    budget_keys: tuple[str, ...]
    rate_keys: tuple[str, ...] = ()
    charge: bool = True
    tombstone_ttl_s: float = 3600.0


class StateStore(Protocol):
    async def admit(self, request: AdmitRequest) -> Admission:
        """Agent breaker, rate limits, deployment choice: all or nothing, one round trip."""
        ...

    async def select(
        self,
        *,
        lease_id: str,
        lease_ttl_s: float,
        candidates: tuple[Candidate, ...],
        breaker: BreakerConfig,
    ) -> Selection:
        """Choose a deployment for a retry or a fallback model (breaker + capacity + lease)."""
        ...

    async def complete(self, completion: Completion) -> tuple[Transition, ...]:
        """Release the attempt's lease, record outcomes, settle rate limits: one round trip."""
        ...

    async def release(
        self,
        *,
        lease_id: str,
        deployment_id: int,
        probe: bool,
        breaker: BreakerConfig,
    ) -> None:
        """Give back a lease without an outcome (cancelled before an answer)."""
        ...

    # --- primitives (operators and tests) ---
    async def breaker_acquire(
        self, key: str, config: BreakerConfig
    ) -> tuple[bool, bool, float, tuple[Transition, ...]]:
        """``(allowed, probe, retry_after, transitions)``."""
        ...

    async def breaker_record(
        self, key: str, config: BreakerConfig, outcome: Outcome, duration_s: float, probe: bool
    ) -> tuple[Transition, ...]: ...

    async def breaker_snapshot(self, key: str, config: BreakerConfig) -> BreakerSnapshot: ...

    async def breaker_command(self, key: str, action: BreakerAction) -> tuple[Transition, ...]: ...

    async def rate_acquire(
        self, limits: tuple[RateLimit, ...], entry_id: str
    ) -> tuple[bool, float]:
        """All limits or none: ``(allowed, retry_after)``."""
        ...

    async def in_flight(self, deployment_ids: tuple[int, ...]) -> dict[int, int]: ...

    async def budget_reserve(
        self, holds: tuple[BudgetHold, ...], entry_id: str, ttl_s: float
    ) -> tuple[bool, dict[str, int]]:
        """Add to ``entry_id``'s reservations (a retry, a fallback, a tool step): all or none.
        Returns ``(reserved, remaining per key)``."""
        ...

    async def budget_usage(self, keys: tuple[str, ...]) -> dict[str, tuple[int, int]]:
        """``key -> (spent, reserved)`` in micro-USD (expired reservations count as spent)."""
        ...

    async def budget_windows(self, keys: tuple[str, ...]) -> dict[str, BudgetWindow]:
        """Every window of ``keys`` as held, unknown ones with ``ready=False``."""
        ...

    async def budget_prepare(self, windows: tuple[WindowInit, ...]) -> tuple[str, ...]:
        """Make windows known: each one the store does not know yet is written as given (and
        marked ready); known ones are left alone, so concurrent rebuilds are harmless. Returns
        the keys written."""
        ...

    async def abandon(self, request: Abandon) -> dict[str, int]:
        """See :class:`Abandon`. Returns lease id -> micro-USD it held (the largest over its
        windows; absent: it held nothing any more)."""
        ...
