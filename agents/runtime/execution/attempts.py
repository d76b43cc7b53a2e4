"""The attempt loop: provider calls until an admitted execution has its answer.

Retries (exponential backoff, full jitter, ``Retry-After``) on the same model, fallbacks to the
next model of the chain, rounds of the agent's tools, all within the deadline (``timeout_s``),
which no attempt starts without ``min_attempt_s`` left of. Each attempt's own timeout is the
time left, less the share kept for the models after the current one in the chain (``timeout_s``
/ the number of models, or ``attempt_timeout_s`` if shorter, each), and at most
``attempt_timeout_s``: a hang on one model leaves the next ones their chance, and the chain
still answers within ``timeout_s``. A stream is held to that timeout until its first token;
after it, to the deadline (it is an answer in progress, and no other model could follow it).

Round trips: an attempt's report to the shared state is sent at once only when another attempt
follows; the execution's last one is left in ``progress.final`` for the executor to send with
the journal write.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, replace

from agents.runtime.budgets import to_micros
from agents.runtime.clock import Clock
from agents.runtime.errors import (
    ClientError,
    DeadlineReached,
    FallbackReason,
    MessageKey,
    ProviderFailure,
    Timeout,
    ToolFailed,
    policy_for,
)
from agents.runtime.execution import results
from agents.runtime.execution.background import Background
from agents.runtime.execution.breakers import BreakerCache
from agents.runtime.execution.context import Admitted, Execution, Progress
from agents.runtime.execution.plan import BudgetsSeen, worst_case
from agents.runtime.ports import ConfigSource, EventSink
from agents.runtime.providers.base import OnToken, ProviderClient, estimate_messages
from agents.runtime.state import (
    AttemptResult,
    BreakerConfig,
    Outcome,
    Selection,
    StateStore,
    StateUnavailable,
)
from agents.runtime.tools import ToolRunner, client_calls, effective_tool_choice, tool_messages
from agents.runtime.types import (
    ChatRequest,
    ChatResponse,
    Deployment,
    ExecutionResult,
    ExecutionStatus,
    Step,
    Usage,
)


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.25
    cap_s: float = 8.0
    min_attempt_s: float = 0.05  # never start an attempt with less time than this left

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * (2**retry)))


class AttemptLoop:
    def __init__(
        self,
        *,
        config: ConfigSource,
        state: StateStore,
        providers: ProviderClient,
        tools: ToolRunner | None,
        clock: Clock,
        events: EventSink,
        retry: RetryPolicy,
        rng: random.Random,
        deployment_breaker: BreakerConfig,
        breakers: BreakerCache,
        budgets: BudgetsSeen,
        background: Background,
    ) -> None:
        self.config = config
        self.state = state
        self.providers = providers
        self.tools = tools
        self.clock = clock
        self.events = events
        self.retry = retry
        self.rng = rng
        self.deployment_breaker = deployment_breaker
        self.breakers = breakers
        self.budgets = budgets
        self.background = background

    async def call(
        self, ex: Execution, admitted: Admitted, progress: Progress, on_token: OnToken | None
    ) -> ExecutionResult:
        """Provider calls until there is an answer: retries, fallbacks and tool rounds, all
        within the deadline. Starts on the lease admission took (``progress.lease``)."""
        chain = admitted.plan.chain
        pending: AttemptResult | None = None  # a succeeded attempt kept open by a tool round
        while True:
            assert progress.lease is not None
            deployment = self._deployment(chain[progress.model_index], progress.lease)
            if progress.attempts and admitted.plan.holds:
                refused = await self._top_up(ex, admitted, progress, deployment, pending)
                if refused is not None:
                    return refused
            pending = None
            remaining = ex.deadline - self.clock.monotonic()
            progress.attempts += 1
            started = self.clock.monotonic()
            streamed_before = progress.streamed_chars
            try:
                response = await self._attempt(
                    ex, admitted, progress, deployment, remaining, on_token
                )
            except ProviderFailure as failure:
                answer = await self._after_failure(
                    ex, admitted, progress, deployment, failure, started, streamed_before
                )
                if answer is not None:
                    return answer
                continue  # progress.lease holds the next attempt's lease
            except BaseException:
                # The caller went away (client disconnect, shutdown) or something broke that is
                # not the provider's answer (a bug, a body that cannot be encoded). Charge what
                # was produced, give back the lease and any probe slots, settle rate limits;
                # then re-raise.
                if progress.streamed_chars:
                    produced = Usage(
                        estimate_messages(progress.messages), (progress.streamed_chars + 3) // 4
                    )
                    progress.charge(deployment, produced)
                aborted = AttemptResult(
                    deployment.id,
                    ex.request.execution_id,
                    Outcome.IGNORED,
                    self.clock.monotonic() - started,
                    progress.probe,
                )
                await asyncio.shield(
                    self.complete(ex, admitted, progress, aborted, Outcome.IGNORED)
                )
                raise
            outcome = await self._after_success(
                ex, admitted, progress, deployment, response, started
            )
            if isinstance(outcome, ExecutionResult):
                return outcome
            pending = outcome  # next provider call with the tool results, same deadline

    async def complete(
        self,
        ex: Execution,
        admitted: Admitted,
        progress: Progress,
        attempt: AttemptResult | None,
        agent_outcome: Outcome | None,
    ) -> None:
        """Report an attempt to the shared state. The final call (with the agent's outcome) is
        left in ``progress.final``, for the executor to send concurrently with the journal
        write: one round trip of latency after the provider call instead of two."""
        if attempt is not None:
            progress.lease = None  # this call gives the lease back
        report = results.completion(
            self.clock, ex, admitted, progress, self.deployment_breaker, attempt, agent_outcome
        )
        if agent_outcome is not None:
            progress.final = report
            return
        # Shielded: a cancel arriving meanwhile must not lose the report.
        moved = await asyncio.shield(self.state.complete(report))
        self.breakers.learn(moved, {}, ex.agent.breaker)

    async def _top_up(
        self,
        ex: Execution,
        admitted: Admitted,
        progress: Progress,
        deployment: Deployment,
        pending: AttemptResult | None,
    ) -> ExecutionResult | None:
        """Another provider call (retry, fallback, tool step): reserve its worst case on top of
        what is already spent before making it. The answer when the budget refuses."""
        plan = admitted.plan
        needed = (
            to_micros(progress.cost, up=True)
            + worst_case(
                self.config.deployments,
                (plan.chain[progress.model_index],),
                estimate_messages(progress.messages),
                ex.max_tokens,
            )
            - progress.reserved
        )
        if needed <= 0:
            return None
        ok, left = await self.state.budget_reserve(
            tuple(replace(h, amount=needed) for h in plan.holds),
            ex.request.execution_id,
            ex.lease_ttl,
        )
        self.budgets.remember(plan.holds, left)
        if ok:
            progress.reserved += needed
            return None
        if pending is None:  # a lease taken for this attempt: give it back
            progress.lease = None
            await self.state.release(
                lease_id=ex.request.execution_id,
                deployment_id=deployment.id,
                probe=progress.probe,
                breaker=self.deployment_breaker,
            )
        await self.complete(ex, admitted, progress, pending, Outcome.IGNORED)
        progress.steps.append(Step("refused", outcome="budget_exceeded"))
        return self._degraded(ex, progress, "budget_exceeded", "budget", deployment)

    async def _after_failure(
        self,
        ex: Execution,
        admitted: Admitted,
        progress: Progress,
        deployment: Deployment,
        failure: ProviderFailure,
        started: float,
        streamed_before: int,
    ) -> ExecutionResult | None:
        """A failed attempt: retry (same model), fall back (next model), or answer, degraded or
        failed. None when another attempt follows: ``progress.lease`` holds its lease."""
        chain = admitted.plan.chain
        elapsed = self.clock.monotonic() - started
        policy = policy_for(failure)
        progress.charge(deployment, Usage(failure.input_tokens, failure.output_tokens))
        progress.steps.append(
            Step(
                "attempt",
                model=deployment.model,
                deployment=deployment.id,
                outcome=type(failure).__name__,
                detail=failure.message[:300],
                latency_ms=elapsed * 1000,
                input_tokens=failure.input_tokens,
                output_tokens=failure.output_tokens,
            )
        )
        attempt = AttemptResult(
            deployment.id,
            ex.request.execution_id,
            Outcome.FAILURE if policy.counts_for_breaker else Outcome.IGNORED,
            elapsed,
            progress.probe,
        )
        delay = self._retry_delay(ex, progress, chain, failure) if policy.retry else None
        can_retry = policy.retry and progress.retries < ex.agent.max_retries and delay is not None
        can_fallback = policy.fallback and progress.model_index + 1 < len(chain)
        if progress.streamed_chars > streamed_before:
            # The caller already received part of this answer: another attempt would stream a
            # second, different answer after it. Degrade instead.
            can_retry = can_fallback = False
        if not can_retry and not can_fallback:
            outcome = Outcome.FAILURE if policy.counts_for_breaker else Outcome.IGNORED
            await self.complete(ex, admitted, progress, attempt, outcome)
            if isinstance(failure, ClientError):
                return results.result(
                    self.clock,
                    ex,
                    progress,
                    ExecutionStatus.FAILED,
                    "",
                    deployment.model,
                    deployment.id,
                    error={"type": "client_error", "message": failure.message[:500]},
                )
            return self._degraded(
                ex,
                progress,
                policy.reason,
                policy.message,
                deployment,
                retry_after=failure.retry_after,
            )
        await self.complete(ex, admitted, progress, attempt, None)
        if can_retry:
            assert delay is not None
            progress.retries += 1
            last = progress.steps[-1] if progress.steps else None
            if last is not None and last.kind == "attempt":  # the failure being retried
                progress.steps[-1] = replace(last, wait_ms=delay * 1000)
            await self.clock.sleep(delay)
            selection = await self._select(ex, progress, chain)
            if selection.deployment_id is not None:
                progress.lease, progress.probe = selection.deployment_id, selection.probe
                return None
            if not can_fallback:
                await self.complete(ex, admitted, progress, None, Outcome.FAILURE)
                return self._degraded(ex, progress, "circuit_open", "unavailable", deployment)
        # Fall back to the next model that has a usable deployment.
        progress.fallback_reason = progress.fallback_reason or policy.reason
        chosen = None
        while progress.model_index + 1 < len(chain) and chosen is None:
            progress.model_index += 1
            progress.retries = 0
            if ex.deadline - self.clock.monotonic() < self.retry.min_attempt_s:
                break
            selection = await self._select(ex, progress, chain)
            if selection.deployment_id is not None:
                chosen = selection
        if chosen is None or chosen.deployment_id is None:
            await self.complete(ex, admitted, progress, None, Outcome.FAILURE)
            return self._degraded(ex, progress, policy.reason, policy.message, deployment)
        progress.lease, progress.probe = chosen.deployment_id, chosen.probe
        progress.steps.append(
            Step(
                "fallback",
                model=chain[progress.model_index],
                outcome=progress.fallback_reason or "",
            )
        )
        return None

    async def _select(self, ex: Execution, progress: Progress, chain: tuple[str, ...]) -> Selection:
        """A deployment of the current model for another attempt (a lease when one is free)."""
        model = chain[progress.model_index]
        candidates = self.breakers.candidates(model, self.config.deployments(model))
        try:
            selection = await self.state.select(
                lease_id=ex.request.execution_id,
                lease_ttl_s=ex.lease_ttl,
                candidates=candidates,
                breaker=self.deployment_breaker,
            )
        except (StateUnavailable, asyncio.CancelledError):
            # A lease it may have taken is not known to this run: drop it from every candidate.
            self.background.give_back(ex, candidates=candidates)
            raise
        self.breakers.learn(selection.transitions, selection.open_until)
        return selection

    async def _after_success(
        self,
        ex: Execution,
        admitted: Admitted,
        progress: Progress,
        deployment: Deployment,
        response: ChatResponse,
        started: float,
    ) -> ExecutionResult | AttemptResult:
        """An answer from the provider: the execution's result, or, after a round of the
        agent's tools, the attempt to report with the next provider call."""
        elapsed = self.clock.monotonic() - started
        progress.charge(deployment, response.usage)
        progress.steps.append(
            Step(
                "attempt",
                model=deployment.model,
                deployment=deployment.id,
                outcome="ok",
                latency_ms=elapsed * 1000,
                input_tokens=response.usage.input_tokens,
                output_tokens=response.usage.output_tokens,
            )
        )
        succeeded = AttemptResult(
            deployment.id, ex.request.execution_id, Outcome.SUCCESS, elapsed, progress.probe
        )
        if response.tool_calls and ex.request.tools:
            handed = client_calls(ex.agent.tools, response.tool_calls)
            if handed:
                # Calls to the caller's tools end the execution: the caller runs them and sends
                # the results in its next request. The agent's own calls of the same turn are
                # not run; the model asks again once it has the caller's results.
                names = ", ".join(call.name for call in handed)
                dropped = len(response.tool_calls) - len(handed)
                detail = f"{names} (agent calls dropped: {dropped})" if dropped else names
                progress.steps.append(Step("tool", outcome="client", detail=detail[:300]))
                await self.complete(ex, admitted, progress, succeeded, Outcome.SUCCESS)
                result = results.result(
                    self.clock,
                    ex,
                    progress,
                    ExecutionStatus.SUCCEEDED,
                    response.content,
                    deployment.model,
                    deployment.id,
                )
                return replace(result, finish_reason="tool_calls", tool_calls=handed)
        if response.tool_calls and ex.agent.tools:
            try:
                refusal = await self._tool_round(ex, progress, response)
            except asyncio.CancelledError:
                await asyncio.shield(
                    self.complete(ex, admitted, progress, succeeded, Outcome.IGNORED)
                )
                raise
            if refusal is None:
                return succeeded
            # The provider answered; the tool failed: no breaker counts it.
            await self.complete(ex, admitted, progress, succeeded, Outcome.IGNORED)
            policy = policy_for(refusal)
            return self._degraded(ex, progress, policy.reason, policy.message, deployment)
        await self.complete(ex, admitted, progress, succeeded, Outcome.SUCCESS)
        return results.result(
            self.clock,
            ex,
            progress,
            ExecutionStatus.SUCCEEDED,
            response.content,
            deployment.model,
            deployment.id,
            finish_reason=response.finish_reason,
        )

    async def _tool_round(
        self, ex: Execution, progress: Progress, response: ChatResponse
    ) -> ToolFailed | None:
        """Run one round of tool calls, in order, and extend the transcript with the results.

        Returns the failure that ends the execution (step cap, a tool error), or None to go on.
        """
        agent = ex.agent
        if self.tools is None or progress.tool_rounds >= agent.max_tool_steps:
            detail = "no tool runner" if self.tools is None else f"{agent.max_tool_steps} rounds"
            progress.steps.append(Step("refused", outcome="tool_step_cap", detail=detail))
            return ToolFailed(f"tool step cap reached ({detail})")
        progress.tool_rounds += 1
        outputs = []
        for call in response.tool_calls:
            started = self.clock.monotonic()
            try:
                outputs.append(
                    await self.tools.run_named(
                        agent.tools, call, timeout_s=ex.deadline - self.clock.monotonic()
                    )
                )
            except ToolFailed as failure:
                progress.steps.append(
                    Step(
                        "tool",
                        outcome="ToolFailed",
                        detail=f"{call.name}: {failure.message}"[:300],
                        latency_ms=(self.clock.monotonic() - started) * 1000,
                    )
                )
                return failure
            progress.steps.append(
                Step(
                    "tool",
                    outcome="ok",
                    detail=call.name,
                    latency_ms=(self.clock.monotonic() - started) * 1000,
                )
            )
        progress.messages = progress.messages + tool_messages(
            response.tool_calls, outputs, content=response.content
        )
        return None

    async def _attempt(
        self,
        ex: Execution,
        admitted: Admitted,
        progress: Progress,
        deployment: Deployment,
        remaining: float,
        on_token: OnToken | None,
    ) -> ChatResponse:
        # The attempt's timeout (module docstring): two subtractions and a min() per attempt.
        budget = remaining - self._kept_for_later(ex, progress, admitted.plan.chain)
        cap = ex.agent.attempt_timeout_s
        if cap is not None and cap < budget:
            budget = cap
        if budget < self.retry.min_attempt_s:
            # Nothing was sent: no breaker counts it; the next model (if any) has its share.
            raise DeadlineReached("no time left for an attempt on this model", phase="total")
        relay: OnToken | None = None
        first_token: asyncio.Timeout | None = None  # a stream's timeout until its first token
        if on_token is not None:
            sink = on_token
            if budget < remaining:
                first_token = asyncio.timeout(budget)
            waiting = first_token
            events, execution_id = self.events, ex.request.execution_id

            async def relay(text: str) -> None:
                nonlocal waiting
                if waiting is not None:  # the first token: the deadline bounds the rest
                    waiting.reschedule(None)
                    waiting = None
                progress.streamed_chars += len(text)
                events.execution_token(execution_id, text)
                await sink(text)

        agent_tools = ex.agent.tools
        request = ChatRequest(
            model=deployment.upstream_model,
            messages=progress.messages,
            max_tokens=ex.max_tokens,
            tools=agent_tools,
        )
        if ex.request.tools:  # the caller's tools ride along with the agent's
            request = replace(
                request,
                tools=agent_tools + ex.request.tools,
                tool_choice=effective_tool_choice(ex.request.tool_choice, progress.tool_rounds),
            )
        if first_token is None:
            return await self.providers.chat(deployment, request, timeout_s=budget, on_token=relay)
        try:
            async with first_token:
                return await self.providers.chat(
                    deployment, request, timeout_s=remaining, on_token=relay
                )
        except TimeoutError:
            if not first_token.expired():
                raise
            # As the provider charges a stream that times out: the prompt, estimated.
            raise Timeout(
                f"no first token within {budget:.3f}s",
                phase="first_token",
                input_tokens=estimate_messages(progress.messages),
            ) from None

    def _kept_for_later(self, ex: Execution, progress: Progress, chain: tuple[str, ...]) -> float:
        """The part of the time left that the current model may not use: an equal share of the
        deadline for each model after it in the chain (``attempt_timeout_s`` if shorter)."""
        later = len(chain) - progress.model_index - 1
        if later <= 0:
            return 0.0
        agent = ex.agent
        share = agent.timeout_s / len(chain)
        if agent.attempt_timeout_s is not None and agent.attempt_timeout_s < share:
            share = agent.attempt_timeout_s
        return later * share

    def _retry_delay(
        self, ex: Execution, progress: Progress, chain: tuple[str, ...], failure: ProviderFailure
    ) -> float | None:
        """The wait before the next attempt, or None if that attempt could not finish in time."""
        delay = (
            failure.retry_after
            if failure.retry_after is not None
            else self.retry.backoff(progress.retries, self.rng)
        )
        # A retry may not eat into the time kept for the models after this one either.
        remaining = ex.deadline - self.clock.monotonic()
        if remaining - self._kept_for_later(ex, progress, chain) - delay < self.retry.min_attempt_s:
            return None
        return delay

    def _degraded(
        self,
        ex: Execution,
        progress: Progress,
        reason: FallbackReason,
        message: MessageKey,
        deployment: Deployment,
        *,
        retry_after: float | None = None,
    ) -> ExecutionResult:
        """A fallback message in place of the answer that ``deployment`` did not give."""
        return results.degraded(
            self.clock,
            ex,
            progress,
            reason,
            message,
            deployment.model,
            deployment.id,
            retry_after=retry_after,
        )

    def _deployment(self, model: str, deployment_id: int) -> Deployment:
        for deployment in self.config.deployments(model):
            if deployment.id == deployment_id:
                return deployment
        raise LookupError(f"deployment {deployment_id} of {model} disappeared")
