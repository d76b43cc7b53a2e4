"""What an execution reports: its result (to the caller, the journal and the cache) and its
state calls' settlement (to the shared state), built from its context."""

from __future__ import annotations

from dataclasses import replace

from agents.runtime.budgets import to_micros
from agents.runtime.cache import CachedAnswer
from agents.runtime.clock import Clock
from agents.runtime.errors import FallbackReason, MessageKey
from agents.runtime.execution.context import Admitted, Execution, Progress
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from agents.runtime.state import (
    Admission,
    AttemptResult,
    BreakerConfig,
    Completion,
    DependencyUnavailable,
    Outcome,
)
from agents.runtime.types import ExecutionResult, ExecutionStatus, Step


def result(
    clock: Clock,
    execution: Execution,
    progress: Progress,
    status: ExecutionStatus,
    output: str,
    model: str | None,
    deployment: int | None,
    *,
    error: dict[str, str] | None = None,
    finish_reason: str = "stop",
    retry_after: float | None = None,
) -> ExecutionResult:
    request = execution.request
    # Every field set here, once: dataclasses.replace() afterwards costs ~10 µs a copy.
    return ExecutionResult(
        execution_id=request.execution_id,
        agent=execution.agent.name,
        status=status,
        output=output,
        model=model,
        deployment=deployment,
        attempts=progress.attempts,
        fallback_used=progress.fallback_reason is not None,
        fallback_reason=progress.fallback_reason,
        cached=False,
        usage=progress.usage,
        cost_usd=progress.cost,
        latency_ms=(clock.monotonic() - execution.started) * 1000,
        created_at=execution.created_at,
        finished_at=clock.now(),
        steps=tuple(progress.steps),
        error=error,
        session_id=request.session_id,
        api_key_id=request.api_key_id,
        metadata=request.metadata,
        input=request.messages,
        model_choice=progress.model_choice,
        finish_reason=finish_reason,
        retry_after=retry_after,
    )


def degraded(
    clock: Clock,
    execution: Execution,
    progress: Progress,
    reason: FallbackReason,
    message: MessageKey,
    model: str | None,
    deployment: int | None,
    *,
    retry_after: float | None = None,
) -> ExecutionResult:
    """A fallback message (the agent's, else the default) in place of an answer."""
    progress.fallback_reason = reason
    text = execution.agent.fallback_messages.get(message) or DEFAULT_FALLBACK_MESSAGES[message]
    return result(
        clock,
        execution,
        progress,
        ExecutionStatus.DEGRADED,
        text,
        model,
        deployment,
        retry_after=retry_after,
    )


def refused(
    clock: Clock, execution: Execution, progress: Progress, admission: Admission
) -> ExecutionResult:
    """An execution that the shared state did not admit (``admission``: its answer)."""
    refusal = admission.refusal
    if refusal == "budget_exceeded":
        progress.steps.append(Step("refused", outcome="budget_exceeded"))
        return degraded(clock, execution, progress, "budget_exceeded", "budget", None, None)
    if refusal == "rate_limited":
        progress.steps.append(Step("refused", outcome="rate_limited"))
        return degraded(
            clock,
            execution,
            progress,
            "rate_limited",
            "rate_limit",
            None,
            None,
            retry_after=admission.retry_after,
        )
    if refusal == "no_deployment":  # every deployment at max_concurrency
        progress.steps.append(Step("refused", outcome="no_capacity"))
        return degraded(
            clock, execution, progress, "rate_limited", "rate_limit", None, None, retry_after=1.0
        )
    progress.steps.append(Step("refused", outcome="circuit_open"))
    return degraded(clock, execution, progress, "circuit_open", "unavailable", None, None)


def agent_full(clock: Clock, execution: Execution, progress: Progress) -> ExecutionResult:
    """Refused before admission: the agent's ``max_concurrency`` executions are in flight in
    this process already (its bulkhead). Answered as a full deployment is: rate limited, to
    be retried in a second."""
    cap = execution.agent.max_concurrency
    progress.steps.append(
        Step("refused", outcome="agent_capacity", detail=f"{cap} in flight in this process")
    )
    return degraded(
        clock, execution, progress, "rate_limited", "rate_limit", None, None, retry_after=1.0
    )


def known_open(
    clock: Clock, execution: Execution, progress: Progress, detail: str
) -> ExecutionResult:
    """Refused before admission: the breakers in the way (``detail``) are known open."""
    progress.steps.append(Step("refused", outcome="circuit_open", detail=detail))
    return degraded(clock, execution, progress, "circuit_open", "unavailable", None, None)


def price_unknown(
    clock: Clock, execution: Execution, progress: Progress, unpriced: tuple[str, ...]
) -> ExecutionResult:
    """Refused before admission, failing closed: a budget cannot be enforced on a call whose
    price is unknown."""
    names = ", ".join(unpriced)
    progress.steps.append(Step("refused", outcome="price_unknown", detail=names))
    return result(
        clock,
        execution,
        progress,
        ExecutionStatus.FAILED,
        "",
        None,
        None,
        error={
            "type": "price_unknown",
            "message": f"no price for {names}, and a budget applies to agent "
            f"{execution.agent.name}: set input/output prices or remove the budget",
        },
    )


def unavailable(
    clock: Clock, execution: Execution, progress: Progress, exc: DependencyUnavailable
) -> ExecutionResult:
    """A dependency did not answer: a typed refusal (503), never an untyped 500."""
    return result(
        clock,
        execution,
        progress,
        ExecutionStatus.FAILED,
        "",
        None,
        None,
        error={"type": exc.kind, "message": str(exc)[:500]},
        retry_after=1.0,
    )


def cache_hit(
    clock: Clock, execution: Execution, progress: Progress, hit: CachedAnswer
) -> ExecutionResult:
    """A cache hit: nothing admitted (no lease, rate budget or reservation), no provider call,
    $0; what it saved is recorded. Usage stays 0 (no provider processed tokens); the original
    usage is in the step."""
    progress.steps.append(
        Step(
            "cache",
            model=hit.model,
            deployment=hit.deployment,
            outcome="hit",
            detail=f"saved {hit.cost_usd} USD; original {hit.usage.input_tokens}/"
            f"{hit.usage.output_tokens} tokens",
        )
    )
    answer = result(
        clock,
        execution,
        progress,
        ExecutionStatus.SUCCEEDED,
        hit.output,
        hit.model,
        hit.deployment,
    )
    return replace(answer, cached=True, saved_usd=hit.cost_usd)


def completion(
    clock: Clock,
    execution: Execution,
    admitted: Admitted,
    progress: Progress,
    deployment_breaker: BreakerConfig,
    attempt: AttemptResult | None,
    agent_outcome: Outcome | None,
) -> Completion:
    """The state call reporting ``attempt``; with ``agent_outcome``, the execution's last one
    (agent breaker, rate-limit and budget settlements)."""
    last = agent_outcome is not None
    rates: tuple[tuple[str, float, int], ...] = ()
    budgets: tuple[tuple[str, int], ...] = ()
    if last:
        tokens = progress.usage.input_tokens + progress.usage.output_tokens
        rates = tuple((k, w, tokens) for k, w in admitted.plan.settle)
        spent = to_micros(progress.cost, up=True)
        budgets = tuple((hold.key, spent) for hold in admitted.plan.holds)
    return Completion(
        attempt=attempt,
        deployment_breaker=deployment_breaker,
        agent_breaker_key=execution.agent_key if last else None,
        agent_breaker=execution.agent.breaker if last else None,
        agent_outcome=agent_outcome,
        agent_duration_s=clock.monotonic() - execution.started,
        agent_probe=admitted.agent_probe,
        entry_id=execution.request.execution_id,
        rate_settlements=rates,
        budget_settlements=budgets,
    )


def abort_completion(
    clock: Clock,
    execution: Execution,
    admitted: Admitted,
    progress: Progress,
    deployment_breaker: BreakerConfig,
) -> Completion:
    """The final report for an execution that ends by a cancel or an exception outside a
    provider call (a backoff, a selection, a top-up, a tool, a journal write): give back any
    held lease, settle what was spent."""
    held = None
    if progress.lease is not None:
        held = AttemptResult(
            progress.lease, execution.request.execution_id, Outcome.IGNORED, 0.0, progress.probe
        )
    return completion(
        clock, execution, admitted, progress, deployment_breaker, held, Outcome.IGNORED
    )
