"""One execution's context, in three records.

:class:`Execution` is fixed when the execution starts, :class:`Admitted` once admission has
answered; neither can change under the attempt loop. Only :class:`Progress` moves: what has
happened so far (attempts, tokens, spend, steps), where the attempts are in the model chain,
and what the end must settle. The abort paths (a cancel, an exception) read it alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from decimal import Decimal

from agents.runtime.budgets import price
from agents.runtime.errors import FallbackReason
from agents.runtime.state import (
    AdmitRequest,
    BreakerConfig,
    BudgetHold,
    Candidate,
    Completion,
    RateLimit,
    StreamRecord,
    agent_breaker_key,
)
from agents.runtime.types import (
    AgentConfig,
    Deployment,
    ExecutionRequest,
    Message,
    Step,
    Usage,
)

# The lease and reservations outlive the execution's deadline by this much, then expire.
LEASE_SLACK_S = 30.0

_NO_USAGE = Usage()  # frozen: one instance serves every execution that has spent nothing


@dataclass(frozen=True, slots=True)
class Execution:
    """The givens of one execution, fixed when it starts."""

    request: ExecutionRequest
    agent: AgentConfig
    started: float  # monotonic
    created_at: float  # wall clock: the time the execution's ledger entry is filed under
    deadline: float  # monotonic: bounds everything, retries and fallbacks included
    max_tokens: int
    agent_key: str  # the agent's breaker
    lease_ttl: float  # how long its lease, reservations and tombstones live

    @classmethod
    def begin(
        cls, request: ExecutionRequest, agent: AgentConfig, *, monotonic: float, now: float
    ) -> Execution:
        return cls(
            request=request,
            agent=agent,
            started=monotonic,
            created_at=now,
            deadline=monotonic + agent.timeout_s,
            max_tokens=min(request.max_tokens or agent.max_tokens, agent.max_tokens),
            agent_key=agent_breaker_key(agent.name),
            lease_ttl=agent.timeout_s + LEASE_SLACK_S,
        )


@dataclass(frozen=True, slots=True)
class AdmissionPlan:
    chain: tuple[str, ...]  # the models to try, in order
    model_choice: str  # why (the cost-aware choice)
    cache_key: str | None  # the answer's key in the response cache; None: not cacheable
    look_up: bool  # whether to look the answer up before calling (not bypassed)
    unpriced: tuple[str, ...]  # deployments of the chain without a price while a budget applies
    rate_limits: tuple[RateLimit, ...]
    holds: tuple[BudgetHold, ...]  # one per budget window, each for the worst case
    reserved: int  # micro-USD: the worst case of one call on any deployment of the chain

    # Derived, not stored: a field of a frozen dataclass costs ~1,200 instructions to set.
    @property
    def budget_keys(self) -> tuple[str, ...]:
        return tuple(hold.key for hold in self.holds)

    @property
    def rate_keys(self) -> tuple[str, ...]:
        return tuple(limit.key for limit in self.rate_limits)

    @property
    def settle(self) -> tuple[tuple[str, float], ...]:
        """(key, window_s) of the tpm limits, settled with the tokens actually used."""
        return tuple(
            (lim.key, lim.window_s) for lim in self.rate_limits if lim.key.startswith("tpm:")
        )

    def request(
        self,
        execution: Execution,
        candidates: tuple[Candidate, ...],
        deployment_breaker: BreakerConfig,
        cache_key: str | None,
        record: StreamRecord | None = None,
    ) -> AdmitRequest:
        """The admission of the model whose ``candidates`` are given; ``cache_key``: where the
        state store can read the cached answer in the same round trip (None: do not look);
        ``record``: the "started" event the store appends if it admits."""
        return AdmitRequest(
            lease_id=execution.request.execution_id,
            lease_ttl_s=execution.lease_ttl,
            agent_breaker_key=execution.agent_key,
            agent_breaker=execution.agent.breaker,
            rate_limits=self.rate_limits,
            candidates=candidates,
            deployment_breaker=deployment_breaker,
            budgets=self.holds,
            cache_key=cache_key,
            record=record,
        )


@dataclass(frozen=True, slots=True)
class Admitted:
    """What admission granted: the plan it was admitted on (its budget holds reserved, its rate
    limits counted), the model and the deployment whose lease it took, and whether those are
    half-open probes."""

    plan: AdmissionPlan
    model_index: int  # in plan.chain
    deployment_id: int | None
    probe: bool  # that lease is a half-open probe of the deployment
    agent_probe: bool  # the execution is a half-open probe of the agent's breaker


@dataclass(slots=True)
class Progress:
    """What one execution has done so far; the only mutable part of its context."""

    messages: tuple[Message, ...]  # the transcript: session history, then tool rounds, added
    model_choice: str = "standard"  # why the chain is what it is (the plan's)
    steps: list[Step] = field(default_factory=list)
    usage: Usage = _NO_USAGE
    cost: Decimal = Decimal(0)
    attempts: int = 0
    fallback_reason: FallbackReason | None = None
    streamed_chars: int = 0  # the caller has received this much of an answer
    tool_rounds: int = 0
    reserved: int = 0  # micro-USD reserved against the budgets so far (admission, top-ups)
    # Where the attempts are, moved on by retries and fallbacks:
    model_index: int = 0  # the model being tried, in the plan's chain
    lease: int | None = None  # the deployment whose lease the execution holds now (None: none)
    probe: bool = False  # that lease is a half-open probe
    retries: int = 0  # retries on the current model
    # What the end must settle:
    admitted: Admitted | None = None  # set: the lease and reservations must be given back
    journaled: asyncio.Future[None] | None = None  # the "started" journal write
    final: Completion | None = None  # the last state call, sent with the "finished" write

    def admit(self, admitted: Admitted) -> None:
        """Admission granted ``admitted``: the attempts start from its lease and reservation."""
        self.admitted = admitted
        self.model_index = admitted.model_index
        self.lease = admitted.deployment_id
        self.probe = admitted.probe
        self.reserved = admitted.plan.reserved

    def charge(self, deployment: Deployment, usage: Usage) -> None:
        self.usage = self.usage + usage
        self.cost += price(deployment, usage)
