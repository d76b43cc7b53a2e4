"""The executor: one agent execution through every safeguard.

Order (docs/ARCHITECTURE.md, "Data flow of one execution"): agent breaker -> rate limits ->
deployment choice (least loaded, breaker-aware) -> attempt with deadline -> retries
(exponential backoff, full jitter, ``Retry-After``) -> fallback models -> tool loop -> record,
metrics, live events.

Round trips to shared state: one :meth:`StateStore.admit` before the first provider call and one
:meth:`StateStore.complete` after the last; only failures (retries, fallbacks) add more. Breakers
known to be open are remembered locally until their ``open_until``, so a rejected call costs no
round trip at all. Where the state store can read the response cache (Redis), the cache lookup
rides on ``admit``; otherwise it comes first.

Structure: :meth:`Executor._admit` (everything before the first provider call: the pure
:func:`~agents.runtime.execution.plan.plan_admission`, the breakers known open, then the
shared state's answer), the attempt loop (:class:`~agents.runtime.execution.attempts.AttemptLoop`:
retries, fallbacks, tools, the deadline), then :meth:`Executor._finish` (settle and journal).
An execution's context is an immutable :class:`~agents.runtime.execution.context.Execution`
and :class:`~agents.runtime.execution.context.Admitted`, and one mutable
:class:`~agents.runtime.execution.context.Progress`; its result and state reports are built by
:mod:`agents.runtime.execution.results`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from agents.runtime.cache import CachedAnswer, ResponseCache, should_cache
from agents.runtime.choice import window
from agents.runtime.clock import Clock
from agents.runtime.execution import results
from agents.runtime.execution.attempts import AttemptLoop, RetryPolicy
from agents.runtime.execution.background import Background
from agents.runtime.execution.breakers import BreakerCache
from agents.runtime.execution.context import AdmissionPlan, Admitted, Execution, Progress
from agents.runtime.execution.plan import BudgetsSeen, plan_admission
from agents.runtime.ports import (
    AdmissionRecords,
    BudgetWindows,
    ConfigSource,
    EventSink,
    NewBudgetWindows,
    NullEvents,
    RecordSink,
    SessionStore,
)
from agents.runtime.providers.base import OnToken, ProviderClient
from agents.runtime.state import (
    Admission,
    BreakerConfig,
    BudgetsUnavailable,
    DependencyUnavailable,
    RecordingUnavailable,
    StateStore,
    StateUnavailable,
    StreamRecord,
)
from agents.runtime.tools import ToolRunner
from agents.runtime.types import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
)

__all__ = ["DEFAULT_DEPLOYMENT_BREAKER", "ExecuteFn", "Executor", "RetryPolicy", "UnknownAgent"]

log = logging.getLogger("breakwater.runtime")


class UnknownAgent(Exception):
    """No enabled agent has that name."""


# Deployments are shared by agents, so their breakers use one configuration of their own.
DEFAULT_DEPLOYMENT_BREAKER = BreakerConfig(
    failure_threshold=5, recovery_timeout_s=30.0, half_open_max_calls=1
)


class Executor:
    def __init__(
        self,
        *,
        config: ConfigSource,
        state: StateStore,
        providers: ProviderClient,
        clock: Clock,
        records: RecordSink,
        events: EventSink | None = None,
        sessions: SessionStore | None = None,
        tools: ToolRunner | None = None,
        cache: ResponseCache | None = None,
        retry: RetryPolicy | None = None,
        deployment_breaker: BreakerConfig = DEFAULT_DEPLOYMENT_BREAKER,
        rng: random.Random | None = None,
        windows: BudgetWindows | None = None,
        admission_records: AdmissionRecords | None = None,
    ) -> None:
        """``admission_records``: ``records`` itself when the state store can append its
        ``started`` event in the admission that admits (a Redis journal on the state's Redis):
        then admission and record are one atomic step, and one round trip."""
        self._config = config
        self._state = state
        self._windows = windows or NewBudgetWindows(state)
        # Dependencies (DependencyUnavailable.kind) this process last found not answering:
        # reported once when they stop, once when they answer again.
        self._down: set[str] = set()
        self._clock = clock
        self._records = records
        self._admission_records = admission_records
        self._events = events or NullEvents()
        self._sessions = sessions
        self._cache = cache
        self._cache_writes: set[asyncio.Future[None]] = set()
        self._deployment_breaker = deployment_breaker
        self._breakers = BreakerCache(clock, deployment_breaker, self._events.breaker_transition)
        self._budgets = BudgetsSeen()
        # Agent name -> its synchronous executions in flight here (only agents with a cap).
        self._in_flight: dict[str, int] = {}
        self._background = Background(state, clock)
        self._attempts = AttemptLoop(
            config=config,
            state=state,
            providers=providers,
            tools=tools,
            clock=clock,
            events=self._events,
            retry=retry or RetryPolicy(),
            rng=rng or random.Random(),
            deployment_breaker=deployment_breaker,
            breakers=self._breakers,
            budgets=self._budgets,
            background=self._background,
        )

    @property
    def _open_until(self) -> dict[str, float]:
        """Breaker key -> the wall-clock time until which it is known to be open."""
        return self._breakers.open_until

    # --- public -----------------------------------------------------------------------------

    def forget_open_breakers(self) -> None:
        """Drop the breakers this process knows to be open (it refuses calls to them without a
        round trip until their recovery time): after an operator's command, the shared state
        decides again."""
        self._breakers.forget()

    async def execute(
        self, request: ExecutionRequest, *, on_token: OnToken | None = None
    ) -> ExecutionResult:
        agent = self._config.agent(request.agent)
        if agent is None:
            raise UnknownAgent(request.agent)
        # The agent's bulkhead in this process: a plain counter (one event loop, no await
        # between the check and the increment), given back however the execution ends.
        held = full = False
        cap = agent.max_concurrency
        if cap is not None and not request.queued:
            running = self._in_flight.get(agent.name, 0)
            if running >= cap:
                full = True
            else:
                self._in_flight[agent.name] = running + 1
                held = True
        try:
            system = (Message("system", agent.system_prompt),) if agent.system_prompt else ()
            clock = self._clock
            ex = Execution.begin(request, agent, monotonic=clock.monotonic(), now=clock.now())
            progress = Progress(system + request.messages)
            self._events.execution_started(request.execution_id, agent.name)
            try:
                if request.session_id and self._sessions is not None:
                    history = window(
                        await self._sessions.history(
                            agent.name, request.session_id, api_key_id=request.api_key_id
                        ),
                        max_messages=agent.session_max_messages,
                        max_tokens=agent.session_max_tokens,
                    )
                    progress.messages = system + history + request.messages
                if full:
                    result = results.agent_full(clock, ex, progress)
                else:
                    result = await self._run(ex, progress, on_token)
            except asyncio.CancelledError:
                result = results.result(
                    clock, ex, progress, ExecutionStatus.CANCELLED, "", None, None
                )
                await self._finish_aborted(ex, progress, result)
                raise
            except DependencyUnavailable as exc:
                # The shared state or the journal did not answer: a typed refusal (503), never an
                # untyped 500.
                if exc.kind not in self._down:
                    self._down.add(exc.kind)
                    self._events.dependency_changed(exc.kind, False, str(exc)[:500])
                result = results.unavailable(clock, ex, progress, exc)
                # Answered now: its record and any settlement wait on the very dependency that did
                # not answer, so they go in the background (the journal writes again what it could
                # not write, the settlement is retried).
                self._background.run(self._finish_aborted(ex, progress, result))
                return result
            except Exception as exc:  # a bug or a broken dependency (the journal): record, re-raise
                error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
                result = results.result(
                    clock, ex, progress, ExecutionStatus.FAILED, "", None, None, error=error
                )
                await self._finish_aborted(ex, progress, result)
                raise
            # The cache write first: it leaves with the settle and the journal.
            self._cache_store(ex, progress, result)
            # Shielded: a caller that goes away now (a client disconnect) must not cancel the
            # settlement or the "finished" journal write of an execution that has ended.
            await asyncio.shield(self._finish(ex, progress, result))
            if (
                request.session_id
                and self._sessions is not None
                and result.status == ExecutionStatus.SUCCEEDED
            ):
                try:
                    await self._sessions.append(
                        agent.name,
                        request.session_id,
                        (
                            *request.messages,
                            Message("assistant", result.output, tool_calls=result.tool_calls),
                        ),
                        api_key_id=request.api_key_id,
                    )
                except Exception:  # the answer stands; the durable copy is the execution record
                    log.warning("could not append to session %s", request.session_id, exc_info=True)
            return result
        finally:
            if held:
                self._release(agent.name)

    def _release(self, agent: str) -> None:
        left = self._in_flight[agent] - 1
        if left:
            self._in_flight[agent] = left
        else:
            del self._in_flight[agent]

    def in_flight(self, agent: str) -> int:
        """The synchronous executions of ``agent`` in flight here, if it has a cap."""
        return self._in_flight.get(agent, 0)

    async def drain_cache_writes(self) -> None:
        """Wait for pending cache writes (call before the event loop closes), and give the
        background state retries a last chance before cancelling them."""
        if self._cache_writes:
            await asyncio.gather(*self._cache_writes, return_exceptions=True)
        await self._background.drain()

    # --- admission ----------------------------------------------------------------------------

    async def _run(
        self, ex: Execution, progress: Progress, on_token: OnToken | None
    ) -> ExecutionResult:
        admitted = await self._admit(ex, progress, on_token)
        if isinstance(admitted, ExecutionResult):
            return admitted
        return await self._attempts.call(ex, admitted, progress, on_token)

    async def _admit(
        self, ex: Execution, progress: Progress, on_token: OnToken | None
    ) -> ExecutionResult | Admitted:
        """Everything before the first provider call, in one admission (one more per model
        whose deployments are all open or full): the agent's breaker, the response cache, prices,
        rate limits, budgets and the deployment. Returns the execution's answer when it ends here
        (cached, refused); else what admission granted, ``progress`` then holding its lease and
        the journal's "started" written."""
        clock, cache = self._clock, self._cache
        if self._breakers.is_open(ex.agent_key):
            return results.known_open(clock, ex, progress, "agent breaker open")
        rules = self._config.budgets(ex.agent.name, ex.request.api_key_id)
        plan = plan_admission(
            ex,
            progress.messages,
            rules,
            self._config.deployments,
            self._budgets,
            cacheable=cache is not None,
        )
        progress.model_choice = plan.model_choice
        # Where admission can read the cache (Redis), the lookup rides on the admit round trip;
        # a refusal before admission looks it up first, so a cached answer is still served.
        lookup: str | None = None
        if plan.look_up:
            assert cache is not None
            assert plan.cache_key is not None
            lookup = cache.admission_key(plan.cache_key)
            if lookup is None and (hit := await cache.get(plan.cache_key)):
                return await self._cached_result(ex, progress, hit, on_token)
        if plan.unpriced:
            if lookup is not None and (hit := await self._cached(plan)):
                return await self._cached_result(ex, progress, hit, on_token)
            return results.price_unknown(clock, ex, progress, plan.unpriced)
        model_index = self._breakers.first_usable(plan.chain, self._config.deployments)
        if model_index is None:
            if lookup is not None and (hit := await self._cached(plan)):
                return await self._cached_result(ex, progress, hit, on_token)
            return results.known_open(clock, ex, progress, "all models open")
        if model_index > 0:
            progress.fallback_reason = "circuit_open"
        progress.model_index = model_index
        # The "started" event carries what admission reserves: a process that dies mid-call is
        # charged for it. Appended by the admission itself where the state store can (one
        # atomic step: no reservation without its record); else journaled concurrently with
        # admission (both leave in this turn of the loop) and awaited before any provider call.
        record: StreamRecord | None = None
        journaled: asyncio.Future[None] | None = None
        if self._admission_records is not None:
            record = self._admission_records.started_record(
                ex.request, ex.created_at, reserved_micros=plan.reserved
            )
        else:
            journaled = progress.journaled = asyncio.ensure_future(
                self._records.started(
                    ex.request,
                    ex.created_at,
                    reserved_micros=plan.reserved,
                    budget_keys=plan.budget_keys,
                )
            )
        admission = await self._ask(ex, progress, plan, lookup, on_token, record)
        if isinstance(admission, ExecutionResult):
            return admission  # the cached answer that admission found
        if not admission.ok:
            return results.refused(clock, ex, progress, admission)
        if record is not None and admission.record_id is not None:
            assert self._admission_records is not None
            self._admission_records.record_written(record, admission.record_id)
        admitted = Admitted(
            plan=plan,
            model_index=progress.model_index,
            deployment_id=admission.deployment_id,
            probe=admission.deployment_probe,
            agent_probe=admission.agent_probe,
        )
        progress.admit(admitted)  # from here on, whatever happens gives the lease back
        if journaled is not None:
            await journaled  # durable before any money is spent upstream
        if self._down:
            self._answering(RecordingUnavailable.kind, "the journal recorded an execution")
        return admitted

    async def _ask(
        self,
        ex: Execution,
        progress: Progress,
        plan: AdmissionPlan,
        lookup: str | None,
        on_token: OnToken | None,
        record: StreamRecord | None = None,
    ) -> Admission | ExecutionResult:
        """The shared state's admission, from ``progress.model_index`` on: the next model when
        one's deployments are all open or full, again once after rebuilding budget windows it
        does not know. Its last answer, or the cached answer that it found."""
        chain, agent_key = plan.chain, ex.agent_key
        prepared = False
        while True:
            model = chain[progress.model_index]
            admit = plan.request(
                ex,
                self._breakers.candidates(model, self._config.deployments(model)),
                self._deployment_breaker,
                lookup,
                record,
            )
            try:
                admission = await self._state.admit(admit)
            except (StateUnavailable, asyncio.CancelledError):
                # The admission may have been applied, or may still be (stuck behind a stall),
                # while the caller is answered now or gone (a client disconnect): make sure it
                # holds nothing then.
                self._background.give_back(
                    ex,
                    candidates=admit.candidates,
                    budget_keys=plan.budget_keys,
                    rate_keys=plan.rate_keys,
                )
                raise
            if self._down:
                self._answering(StateUnavailable.kind, "the shared state answered an admission")
            if admission.refusal == "budget_unknown":
                if prepared:
                    raise BudgetsUnavailable(
                        "budget windows could not be rebuilt: "
                        + ", ".join(admission.unknown_budgets)
                    )
                # A window the store does not know (a restart, lost data, a new window): it is
                # rebuilt from the ledger first, then admission runs again.
                prepared = True
                unknown = set(admission.unknown_budgets)
                await self._windows.prepare(tuple(h for h in plan.holds if h.key in unknown))
                if self._down:
                    self._answering(BudgetsUnavailable.kind, "budget windows were rebuilt")
                continue
            if admission.refusal == "late":  # a fresh lease id was abandoned: never, in fact
                raise StateUnavailable(f"lease {admit.lease_id} was abandoned")
            if admission.cached is not None:
                assert self._cache is not None  # a lookup comes from the cache
                lookup = None  # found once: a value that does not parse is a miss
                if hit := self._cache.answer(admission.cached):
                    if prepared:
                        self._forget_rebuilt(ex, plan)
                    return await self._cached_result(ex, progress, hit, on_token)
                continue
            lookup = None  # the next model's admission (if any) need not look again
            self._breakers.learn(admission.transitions, admission.open_until, ex.agent.breaker)
            self._budgets.remember(plan.holds, admission.budget_remaining)
            if admission.ok or admission.refusal in ("rate_limited", "budget_exceeded"):
                break
            if admission.refusal == "circuit_open" and agent_key in admission.open_until:
                break  # the agent's own breaker
            # This model's deployments are all open or full: try the next model.
            progress.fallback_reason = progress.fallback_reason or "circuit_open"
            if progress.model_index + 1 >= len(chain):
                break
            progress.model_index += 1
        if prepared and not admission.ok:
            self._forget_rebuilt(ex, plan)
        return admission

    def _forget_rebuilt(self, ex: Execution, plan: AdmissionPlan) -> None:
        """An execution that waited for its budget windows to be rebuilt, then was not
        admitted: the rebuild may have counted its journaled reservation (its record said
        "running"), which nothing will settle. Given back in the background."""
        self._background.give_back(ex, budget_keys=plan.budget_keys)

    def _answering(self, kind: str, detail: str) -> None:
        if kind in self._down:
            self._down.discard(kind)
            self._events.dependency_changed(kind, True, detail)

    # --- the response cache -------------------------------------------------------------------

    async def _cached_result(
        self, ex: Execution, progress: Progress, hit: CachedAnswer, on_token: OnToken | None
    ) -> ExecutionResult:
        """A cache hit, streamed to a caller who streams."""
        if on_token is not None and hit.output:
            self._events.execution_token(ex.request.execution_id, hit.output)
            await on_token(hit.output)
        return results.cache_hit(self._clock, ex, progress, hit)

    async def _cached(self, plan: AdmissionPlan) -> CachedAnswer | None:
        """The cached answer, looked up on its own (a refusal before admission)."""
        assert self._cache is not None
        assert plan.cache_key is not None
        return await self._cache.get(plan.cache_key)

    def _cache_store(self, ex: Execution, progress: Progress, result: ExecutionResult) -> None:
        """Store a cacheable answer off the critical path (a tracked background task)."""
        # Only an admitted execution answers from a provider: any other result is not cached.
        if self._cache is None or progress.admitted is None:
            return
        key = progress.admitted.plan.cache_key
        if key is None or not should_cache(result):
            return
        task = asyncio.ensure_future(
            self._cache.put(key, CachedAnswer.from_result(result), ex.agent.cache_ttl_s)
        )
        self._cache_writes.add(task)
        task.add_done_callback(self._cache_writes.discard)

    # --- the end ------------------------------------------------------------------------------

    async def _finish_aborted(
        self, ex: Execution, progress: Progress, result: ExecutionResult
    ) -> None:
        """Settle and journal an execution that ended by a cancel or an exception: whatever
        raised, a lease and reservations that admission took are given back (what was spent is
        charged). Shielded: a second cancel does not stop it."""
        if progress.final is None and progress.admitted is not None:
            progress.final = results.abort_completion(
                self._clock, ex, progress.admitted, progress, self._deployment_breaker
            )
        with contextlib.suppress(Exception):
            await asyncio.shield(self._finish(ex, progress, result))

    async def _finish(self, ex: Execution, progress: Progress, result: ExecutionResult) -> None:
        """Settle the shared state and journal the result, concurrently, then publish.

        A failure here must not take the answer away from a caller who has already paid for
        it: it is logged loudly instead (leases and reservations expire by themselves)."""
        final, progress.final = progress.final, None

        async def settle() -> None:
            if final is None:
                return
            try:
                self._breakers.learn(await self._state.complete(final), {}, ex.agent.breaker)
            except StateUnavailable:
                # Settling twice counts once, so it is sent again until the store takes it;
                # until then the reservation stands (and would become spend if it expired).
                self._background.retry(
                    lambda: self._state.complete(final), "settlement", ex.lease_ttl
                )
                raise

        async def journal() -> None:
            started = progress.journaled
            if started is not None and not started.cancelled():
                # "started" before "finished". Cancelled (a disconnect while it was awaited) or
                # failed, it may still have been written: "finished" alone ends the row either
                # way, so it is written whatever became of "started".
                with contextlib.suppress(Exception):
                    await started
            await self._records.finished(result)

        try:
            # The journal write as a task, the state call inline: both leave in the same turn of
            # the loop (one round trip on a pipelining client), with one task instead of two.
            journaled = asyncio.ensure_future(journal())
            outcomes: list[BaseException | None] = [None, None]
            try:
                await settle()
            except Exception as exc:
                outcomes[0] = exc
            try:
                await journaled
            except Exception as exc:
                outcomes[1] = exc
            for what, outcome in zip(("settle", "journal"), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    log.error(
                        "could not %s execution %s (%s)",
                        what,
                        result.execution_id,
                        result.status.value,
                        exc_info=outcome,
                    )
        finally:
            self._events.execution_finished(result)


ExecuteFn = Callable[[ExecutionRequest], Awaitable[ExecutionResult]]
