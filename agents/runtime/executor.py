"""The executor: one agent execution through every safeguard.

Order (ARCHITECTURE "data flow"): agent breaker -> rate limits -> deployment choice (least
loaded, breaker-aware) -> attempt with deadline -> retries (exponential backoff, full jitter,
``Retry-After``) -> fallback models -> tool loop -> record, metrics, live events.

Round trips to shared state: one :meth:`StateStore.admit` before the first provider call and one
:meth:`StateStore.complete` after the last; only failures (retries, fallbacks) add more. Breakers
known to be open are remembered locally until their ``open_until``, so a rejected call costs no
round trip at all. Where the state store can read the response cache (Redis), the cache lookup
rides on ``admit``; otherwise it comes first.

Structure: :meth:`Executor._admit` (everything before the first provider call), then
:meth:`Executor._call` (attempts, with ``_after_failure`` deciding retry / fallback / answer and
``_after_success`` the tool rounds), then :meth:`Executor._finish` (settle and journal).

The deadline (``timeout_s``) bounds everything, retries and fallbacks included: no attempt starts
that could not get at least ``min_attempt_s`` before it. Each attempt's own timeout is the time
left, less the share kept for the models after the current one in the chain (``timeout_s`` / the
number of models, or ``attempt_timeout_s`` if shorter, each), and at most ``attempt_timeout_s``:
a hang on one model leaves the next ones their chance, and the chain still answers within
``timeout_s``. A stream is held to that timeout until its first token; after it, to the deadline
(it is an answer in progress, and no other model could follow it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal

from agents.runtime.budgets import holds_for, price, to_micros, worst_case_micros
from agents.runtime.cache import (
    CachedAnswer,
    ResponseCache,
    cache_key,
    cache_scope,
    should_cache,
)
from agents.runtime.choice import choose_models, window
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
from agents.runtime.fallbacks import DEFAULT_FALLBACK_MESSAGES
from agents.runtime.ports import (
    BudgetWindows,
    ConfigSource,
    EventSink,
    NewBudgetWindows,
    NullEvents,
    RecordSink,
    SessionStore,
)
from agents.runtime.providers.base import OnToken, ProviderClient, estimate_messages
from agents.runtime.state import (
    Abandon,
    AdmitRequest,
    AttemptResult,
    BreakerConfig,
    BreakerState,
    BudgetHold,
    BudgetsUnavailable,
    Candidate,
    Completion,
    DependencyUnavailable,
    Outcome,
    RateLimit,
    RecordingUnavailable,
    Selection,
    StateStore,
    StateUnavailable,
    Transition,
    agent_breaker_key,
)
from agents.runtime.tools import ToolRunner, client_calls, effective_tool_choice, tool_messages
from agents.runtime.types import (
    AgentConfig,
    ChatRequest,
    ChatResponse,
    Deployment,
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    Step,
    Usage,
)

log = logging.getLogger("breakwater.runtime")


class UnknownAgent(Exception):
    """No enabled agent has that name."""


@dataclass(frozen=True)
class RetryPolicy:
    base_s: float = 0.25
    cap_s: float = 8.0
    min_attempt_s: float = 0.05  # never start an attempt with less time than this left

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**retry)]."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * (2**retry)))


# Deployments are shared by agents, so their breakers use one configuration of their own.
DEFAULT_DEPLOYMENT_BREAKER = BreakerConfig(
    failure_threshold=5, recovery_timeout_s=30.0, half_open_max_calls=1
)


@dataclass
class _Run:
    """Mutable bookkeeping for one execution."""

    request: ExecutionRequest
    agent: AgentConfig
    started: float  # monotonic
    created_at: float  # wall clock
    deadline: float  # monotonic
    messages: tuple[Message, ...]
    max_tokens: int
    steps: list[Step] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost: Decimal = Decimal(0)
    attempts: int = 0
    fallback_reason: FallbackReason | None = None
    transitions: list[Transition] = field(default_factory=list)
    streamed_chars: int = 0
    tool_rounds: int = 0
    reserved: int = 0  # micro-USD reserved against the execution's budgets so far
    cache_key: str | None = None
    final: Completion | None = None  # the last state call, sent with the journal write
    held: tuple[int, bool] | None = None  # (deployment, probe) whose lease is held now
    admitted: bool = False  # admission took a lease (and reservations): they must be given back
    journaled: asyncio.Future[None] | None = None  # the "started" journal write
    model_choice: str = "standard"
    # Set by admission, moved on by retries and fallbacks:
    agent_key: str = ""
    chain: tuple[str, ...] = ()  # the models to try, in order
    model_index: int = 0  # the one being tried
    deployment_id: int | None = None  # the deployment whose lease the next attempt uses
    probe: bool = False  # that lease is a half-open probe
    retries: int = 0  # retries on the current model
    agent_probe: bool = False
    holds: tuple[BudgetHold, ...] = ()
    settle: tuple[tuple[str, float], ...] = ()  # (key, window_s) of the tpm limits to settle
    lease_ttl: float = 0.0


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
    ) -> None:
        self._config = config
        self._state = state
        self._windows = windows or NewBudgetWindows(state)
        # State calls that must still reach the store after their caller was answered (an
        # abandoned admission, a settlement that timed out): retried in the background.
        self._background: set[asyncio.Future[None]] = set()
        # Dependencies (DependencyUnavailable.kind) this process last found not answering:
        # reported once when they stop, once when they answer again.
        self._down: set[str] = set()
        self._providers = providers
        self._clock = clock
        self._records = records
        self._events = events or NullEvents()
        self._sessions = sessions
        self._tools = tools
        self._cache = cache
        self._cache_writes: set[asyncio.Future[None]] = set()
        self._retry = retry or RetryPolicy()
        self._deployment_breaker = deployment_breaker
        self._rng = rng or random.Random()
        # breaker key -> wall-clock time until which it is known to be open
        self._open_until: dict[str, float] = {}
        # budget key -> (micro-USD left, limit) as last seen: drives the cheap-model rule
        # without an extra round trip (at most one execution stale).
        self._budget_left: dict[str, tuple[int, int]] = {}
        # model -> (its deployments as the config gave them, their candidates)
        self._all_candidates: dict[str, tuple[tuple[Deployment, ...], tuple[Candidate, ...]]] = {}

    # --- public -----------------------------------------------------------------------------

    def forget_open_breakers(self) -> None:
        """Drop the breakers this process knows to be open (it refuses calls to them without a
        round trip until their recovery time): after an operator's command, the shared state
        decides again."""
        self._open_until.clear()

    async def execute(
        self, request: ExecutionRequest, *, on_token: OnToken | None = None
    ) -> ExecutionResult:
        agent = self._config.agent(request.agent)
        if agent is None:
            raise UnknownAgent(request.agent)
        system = (Message("system", agent.system_prompt),) if agent.system_prompt else ()
        started = self._clock.monotonic()
        run = _Run(
            request=request,
            agent=agent,
            started=started,
            created_at=self._clock.now(),
            deadline=started + agent.timeout_s,
            messages=system + request.messages,
            max_tokens=min(request.max_tokens or agent.max_tokens, agent.max_tokens),
        )
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
                run.messages = system + history + request.messages
            result = await self._run(run, on_token)
        except asyncio.CancelledError:
            result = self._result(run, ExecutionStatus.CANCELLED, "", None, None)
            await self._finish_aborted(run, result)
            raise
        except DependencyUnavailable as exc:
            # The shared state or the journal did not answer: a typed refusal (503), never an
            # untyped 500.
            if exc.kind not in self._down:
                self._down.add(exc.kind)
                self._events.dependency_changed(exc.kind, False, str(exc)[:500])
            result = self._unavailable(run, exc)
            # Answered now: its record and any settlement wait on the very dependency that did
            # not answer, so they go in the background (the journal writes again what it could
            # not write, the settlement is retried).
            task = asyncio.ensure_future(self._finish_aborted(run, result))
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            return result
        except Exception as exc:  # a bug or a broken dependency (the journal): record, re-raise
            error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
            result = self._result(run, ExecutionStatus.FAILED, "", None, None, error=error)
            await self._finish_aborted(run, result)
            raise
        self._cache_store(run, result)  # first: its write leaves with the settle and the journal
        # Shielded: a caller that goes away now (a client disconnect) must not cancel the
        # settlement or the "finished" journal write of an execution that has ended.
        await asyncio.shield(self._finish(run, result))
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

    # --- the pipeline -------------------------------------------------------------------------

    async def _run(self, run: _Run, on_token: OnToken | None) -> ExecutionResult:
        refused = await self._admit(run, on_token)
        if refused is not None:
            return refused
        return await self._call(run, on_token)

    async def _admit(self, run: _Run, on_token: OnToken | None) -> ExecutionResult | None:
        """Everything before the first provider call, in one admission (one more per model
        whose deployments are all open or full): the agent's breaker, the response cache, prices,
        rate limits, budgets and the deployment. Returns the execution's answer when it ends here
        (cached, refused); None when admitted, ``run`` then holding a lease on
        ``run.deployment_id`` and the journal's "started" written."""
        agent = run.agent
        now = self._clock.now()
        agent_key = run.agent_key = agent_breaker_key(agent.name)
        if self._open_until.get(agent_key, 0.0) > now:
            run.steps.append(Step("refused", outcome="circuit_open", detail="agent breaker open"))
            return self._degraded(run, "circuit_open", "unavailable", model=None, deployment=None)

        rules = self._config.budgets(agent.name, run.request.api_key_id)
        # The budget windows, once; chosen by the execution's created_at, the time its ledger
        # entry is filed under, so that counter and ledger agree even across midnight.
        windows = holds_for(rules, run.created_at, 0) if rules else ()
        chain, run.model_choice = self._choose_models(run, windows)
        run.chain = chain
        # Not with client tools: their definitions and tool_choice are not in the key.
        # Where admission can read the cache (Redis), the lookup rides on the admit round trip;
        # a refusal before admission looks it up first, so a cached answer is still served.
        lookup: str | None = None
        if self._cache is not None and agent.cache_ttl_s > 0 and not run.request.tools:
            run.cache_key = cache_key(
                agent=agent.name,
                model_chain=chain,
                messages=run.messages,
                max_tokens=run.max_tokens,
                tools=agent.tools,
                scope=cache_scope(run.request.api_key_id),
            )
            if not run.request.bypass_cache:
                lookup = self._cache.admission_key(run.cache_key)
                if lookup is None and (hit := await self._cache.get(run.cache_key)):
                    return await self._cached_result(run, hit, on_token)
        if rules:
            unpriced = sorted(
                {
                    f"{d.model} (deployment {d.id})"
                    for m in chain
                    for d in self._config.deployments(m)
                    if not d.priced
                }
            )
            if unpriced:
                if lookup is not None and (hit := await self._cached(run)):
                    return await self._cached_result(run, hit, on_token)
                # Fail closed: a budget cannot be enforced on a call whose price is unknown.
                run.steps.append(
                    Step("refused", outcome="price_unknown", detail=", ".join(unpriced))
                )
                return self._result(
                    run,
                    ExecutionStatus.FAILED,
                    "",
                    None,
                    None,
                    error={
                        "type": "price_unknown",
                        "message": f"no price for {', '.join(unpriced)}, and a budget applies "
                        f"to agent {agent.name}: set input/output prices or remove the budget",
                    },
                )
        model_index = self._first_usable(chain, now)
        if model_index is None:
            if lookup is not None and (hit := await self._cached(run)):
                return await self._cached_result(run, hit, on_token)
            run.steps.append(Step("refused", outcome="circuit_open", detail="all models open"))
            return self._degraded(run, "circuit_open", "unavailable", model=None, deployment=None)
        if model_index > 0:
            run.fallback_reason = "circuit_open"

        estimate = estimate_messages(run.messages) + run.max_tokens
        limits = []
        if agent.rate_limits.rpm:
            limits.append(RateLimit(f"rpm:agent:{agent.name}", agent.rate_limits.rpm, 60.0, 1))
        if agent.rate_limits.tpm:
            limits.append(
                RateLimit(f"tpm:agent:{agent.name}", agent.rate_limits.tpm, 60.0, estimate)
            )
        key_limits = run.request.api_key_limits
        if run.request.api_key_id is not None and key_limits.rpm:
            limits.append(RateLimit(f"rpm:key:{run.request.api_key_id}", key_limits.rpm, 60.0, 1))
        if run.request.api_key_id is not None and key_limits.tpm:
            limits.append(
                RateLimit(f"tpm:key:{run.request.api_key_id}", key_limits.tpm, 60.0, estimate)
            )
        lease_ttl = run.lease_ttl = agent.timeout_s + 30.0
        input_estimate = estimate_messages(run.messages)
        holds: tuple[BudgetHold, ...] = ()
        if rules:
            worst = self._worst_case(chain, input_estimate, run.max_tokens)
            holds = tuple(BudgetHold(w.key, w.limit, worst, w.ttl_s) for w in windows)
            run.reserved = worst
        run.holds = holds
        # Journaled concurrently with admission (both leave in this turn of the loop), with
        # what admission reserves: a process that dies mid-call is charged for it. Awaited
        # before any provider call.
        run.journaled = asyncio.ensure_future(
            self._records.started(
                run.request,
                run.created_at,
                reserved_micros=run.reserved,
                budget_keys=tuple(h.key for h in holds),
            )
        )
        prepared = False
        while True:
            admit = AdmitRequest(
                lease_id=run.request.execution_id,
                lease_ttl_s=lease_ttl,
                agent_breaker_key=agent_key,
                agent_breaker=agent.breaker,
                rate_limits=tuple(limits),
                candidates=self._candidates(chain[model_index]),
                deployment_breaker=self._deployment_breaker,
                budgets=holds,
                cache_key=lookup,
            )
            try:
                admission = await self._state.admit(admit)
            except (StateUnavailable, asyncio.CancelledError):
                # The admission may have been applied, or may still be (stuck behind a stall),
                # while the caller is answered now or gone (a client disconnect): make sure it
                # holds nothing then.
                self._give_back_later(
                    run,
                    candidates=admit.candidates,
                    budget_keys=tuple(h.key for h in holds),
                    rate_keys=tuple(limit.key for limit in limits),
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
                await self._windows.prepare(tuple(h for h in holds if h.key in unknown))
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
                        self._forget_rebuilt(run)
                    return await self._cached_result(run, hit, on_token)
                continue
            lookup = None  # the next model's admission (if any) need not look again
            self._learn(admission.transitions, admission.open_until, agent.breaker)
            self._remember_budgets(holds, admission.budget_remaining)
            if admission.ok or admission.refusal in ("rate_limited", "budget_exceeded"):
                break
            if admission.refusal == "circuit_open" and agent_key in admission.open_until:
                break  # the agent's own breaker
            # This model's deployments are all open or full: try the next model.
            run.fallback_reason = run.fallback_reason or "circuit_open"
            model_index += 1
            if model_index >= len(chain):
                break
        if not admission.ok:
            if prepared:
                self._forget_rebuilt(run)
            if admission.refusal == "budget_exceeded":
                run.steps.append(Step("refused", outcome="budget_exceeded"))
                return self._degraded(run, "budget_exceeded", "budget", None, None)
            if admission.refusal == "rate_limited":
                run.steps.append(Step("refused", outcome="rate_limited"))
                return self._degraded(
                    run, "rate_limited", "rate_limit", None, None, retry_after=admission.retry_after
                )
            if admission.refusal == "no_deployment":  # every deployment at max_concurrency
                run.steps.append(Step("refused", outcome="no_capacity"))
                return self._degraded(
                    run, "rate_limited", "rate_limit", None, None, retry_after=1.0
                )
            run.steps.append(Step("refused", outcome="circuit_open"))
            return self._degraded(run, "circuit_open", "unavailable", None, None)

        run.model_index = model_index
        run.agent_probe = admission.agent_probe
        run.deployment_id = deployment_id = admission.deployment_id
        run.probe = probe = admission.deployment_probe
        run.settle = tuple(
            (limit.key, limit.window_s) for limit in limits if limit.key.startswith("tpm:")
        )
        run.held = (deployment_id, probe) if deployment_id is not None else None
        run.admitted = True  # from here on, whatever happens gives the lease back
        if run.journaled is not None:
            await run.journaled  # durable before any money is spent upstream
            if self._down:
                self._answering(RecordingUnavailable.kind, "the journal recorded an execution")
        return None

    def _forget_rebuilt(self, run: _Run) -> None:
        """An execution that waited for its budget windows to be rebuilt, then was not
        admitted: the rebuild may have counted its journaled reservation (its record said
        "running"), which nothing will settle. Given back in the background."""
        self._give_back_later(run, budget_keys=tuple(h.key for h in run.holds))

    def _answering(self, kind: str, detail: str) -> None:
        if kind in self._down:
            self._down.discard(kind)
            self._events.dependency_changed(kind, True, detail)

    def _completion(
        self, run: _Run, attempt: AttemptResult | None, agent_outcome: Outcome | None
    ) -> Completion:
        """The state call reporting ``attempt``; with ``agent_outcome``, the execution's last
        one (agent breaker, rate-limit and budget settlements)."""
        tokens = run.usage.input_tokens + run.usage.output_tokens
        last = agent_outcome is not None
        return Completion(
            attempt=attempt,
            deployment_breaker=self._deployment_breaker,
            agent_breaker_key=run.agent_key if last else None,
            agent_breaker=run.agent.breaker if last else None,
            agent_outcome=agent_outcome,
            agent_duration_s=self._clock.monotonic() - run.started,
            agent_probe=run.agent_probe,
            entry_id=run.request.execution_id,
            rate_settlements=tuple((k, w, tokens) for k, w in run.settle) if last else (),
            budget_settlements=tuple((hold.key, to_micros(run.cost, up=True)) for hold in run.holds)
            if last
            else (),
        )

    async def _complete(
        self, run: _Run, attempt: AttemptResult | None, agent_outcome: Outcome | None
    ) -> None:
        """Report an attempt to the shared state. The final call (with the agent's outcome)
        is deferred to :meth:`_finish`, which sends it concurrently with the journal write:
        one round trip of latency after the provider call instead of two."""
        if attempt is not None:
            run.held = None  # this call gives the lease back
        if agent_outcome is not None:
            run.final = self._completion(run, attempt, agent_outcome)
            return
        # Shielded: a cancel arriving meanwhile must not lose the report.
        moved = await asyncio.shield(self._state.complete(self._completion(run, attempt, None)))
        self._learn(moved, {}, run.agent.breaker)

    def _abort_completion(self, run: _Run) -> Completion:
        """The final report for an execution that ends by a cancel or an exception outside a
        provider call (a backoff, a selection, a top-up, a tool, a journal write): give back
        any held lease, settle what was spent."""
        held = None
        if run.held is not None:
            held = AttemptResult(
                run.held[0], run.request.execution_id, Outcome.IGNORED, 0.0, run.held[1]
            )
        return self._completion(run, held, Outcome.IGNORED)

    async def _call(self, run: _Run, on_token: OnToken | None) -> ExecutionResult:
        """Provider calls until there is an answer: retries, fallbacks and tool rounds, all
        within the deadline."""
        pending: AttemptResult | None = None  # a succeeded attempt kept open by a tool round
        while True:
            assert run.deployment_id is not None
            deployment = self._deployment(run.chain[run.model_index], run.deployment_id)
            if run.attempts and run.holds:
                refused = await self._top_up(run, deployment, pending)
                if refused is not None:
                    return refused
            pending = None
            remaining = run.deadline - self._clock.monotonic()
            run.attempts += 1
            started = self._clock.monotonic()
            streamed_before = run.streamed_chars
            try:
                response = await self._attempt(run, deployment, remaining, on_token)
            except ProviderFailure as failure:
                answer = await self._after_failure(
                    run, deployment, failure, started, streamed_before
                )
                if answer is not None:
                    return answer
                continue  # run.deployment_id holds the next attempt's lease
            except BaseException:
                # The caller went away (client disconnect, shutdown) or something broke that is
                # not the provider's answer (a bug, a body that cannot be encoded). Charge what
                # was produced, give back the lease and any probe slots, settle rate limits;
                # then re-raise.
                if run.streamed_chars:
                    produced = Usage(estimate_messages(run.messages), (run.streamed_chars + 3) // 4)
                    self._charge(run, deployment, produced)
                aborted = AttemptResult(
                    deployment.id,
                    run.request.execution_id,
                    Outcome.IGNORED,
                    self._clock.monotonic() - started,
                    run.probe,
                )
                await asyncio.shield(self._complete(run, aborted, Outcome.IGNORED))
                raise
            outcome = await self._after_success(run, deployment, response, started)
            if isinstance(outcome, ExecutionResult):
                return outcome
            pending = outcome  # next provider call with the tool results, same deadline

    async def _top_up(
        self, run: _Run, deployment: Deployment, pending: AttemptResult | None
    ) -> ExecutionResult | None:
        """Another provider call (retry, fallback, tool step): reserve its worst case on top of
        what is already spent before making it. The answer when the budget refuses."""
        needed = (
            to_micros(run.cost, up=True)
            + self._worst_case(
                (run.chain[run.model_index],), estimate_messages(run.messages), run.max_tokens
            )
            - run.reserved
        )
        if needed <= 0:
            return None
        ok, left = await self._state.budget_reserve(
            tuple(replace(h, amount=needed) for h in run.holds),
            run.request.execution_id,
            run.lease_ttl,
        )
        self._remember_budgets(run.holds, left)
        if ok:
            run.reserved += needed
            return None
        if pending is None:  # a lease taken for this attempt: give it back
            run.held = None
            await self._state.release(
                lease_id=run.request.execution_id,
                deployment_id=deployment.id,
                probe=run.probe,
                breaker=self._deployment_breaker,
            )
        await self._complete(run, pending, Outcome.IGNORED)
        run.steps.append(Step("refused", outcome="budget_exceeded"))
        return self._degraded(run, "budget_exceeded", "budget", deployment.model, deployment.id)

    async def _after_failure(
        self,
        run: _Run,
        deployment: Deployment,
        failure: ProviderFailure,
        started: float,
        streamed_before: int,
    ) -> ExecutionResult | None:
        """A failed attempt: retry (same model), fall back (next model), or answer, degraded or
        failed. None when another attempt follows: ``run.deployment_id`` holds its lease."""
        elapsed = self._clock.monotonic() - started
        policy = policy_for(failure)
        self._charge(run, deployment, Usage(failure.input_tokens, failure.output_tokens))
        run.steps.append(
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
            run.request.execution_id,
            Outcome.FAILURE if policy.counts_for_breaker else Outcome.IGNORED,
            elapsed,
            run.probe,
        )
        delay = self._retry_delay(run, failure, run.retries) if policy.retry else None
        can_retry = policy.retry and run.retries < run.agent.max_retries and delay is not None
        can_fallback = policy.fallback and run.model_index + 1 < len(run.chain)
        if run.streamed_chars > streamed_before:
            # The caller already received part of this answer: another attempt would stream a
            # second, different answer after it. Degrade instead.
            can_retry = can_fallback = False
        if not can_retry and not can_fallback:
            outcome = Outcome.FAILURE if policy.counts_for_breaker else Outcome.IGNORED
            await self._complete(run, attempt, outcome)
            if isinstance(failure, ClientError):
                return self._result(
                    run,
                    ExecutionStatus.FAILED,
                    "",
                    deployment.model,
                    deployment.id,
                    error={"type": "client_error", "message": failure.message[:500]},
                )
            return self._degraded(
                run,
                policy.reason,
                policy.message,
                deployment.model,
                deployment.id,
                retry_after=failure.retry_after,
            )
        await self._complete(run, attempt, None)
        if can_retry:
            assert delay is not None
            run.retries += 1
            await self._clock.sleep(delay)
            selection = await self._select(run)
            if selection.deployment_id is not None:
                run.deployment_id, run.probe = selection.deployment_id, selection.probe
                run.held = (run.deployment_id, run.probe)
                return None
            if not can_fallback:
                await self._complete(run, None, Outcome.FAILURE)
                return self._degraded(
                    run, "circuit_open", "unavailable", deployment.model, deployment.id
                )
        # Fall back to the next model that has a usable deployment.
        run.fallback_reason = run.fallback_reason or policy.reason
        chosen = None
        while run.model_index + 1 < len(run.chain) and chosen is None:
            run.model_index += 1
            run.retries = 0
            if self._remaining(run) < self._retry.min_attempt_s:
                break
            selection = await self._select(run)
            if selection.deployment_id is not None:
                chosen = selection
        if chosen is None or chosen.deployment_id is None:
            await self._complete(run, None, Outcome.FAILURE)
            return self._degraded(
                run, policy.reason, policy.message, deployment.model, deployment.id
            )
        run.deployment_id, run.probe = chosen.deployment_id, chosen.probe
        run.held = (run.deployment_id, run.probe)
        run.steps.append(
            Step("fallback", model=run.chain[run.model_index], outcome=run.fallback_reason or "")
        )
        return None

    async def _select(self, run: _Run) -> Selection:
        """A deployment of the current model for another attempt (a lease when one is free)."""
        candidates = self._candidates(run.chain[run.model_index])
        try:
            selection = await self._state.select(
                lease_id=run.request.execution_id,
                lease_ttl_s=run.lease_ttl,
                candidates=candidates,
                breaker=self._deployment_breaker,
            )
        except (StateUnavailable, asyncio.CancelledError):
            # A lease it may have taken is not known to this run: drop it from every candidate.
            self._give_back_later(run, candidates=candidates)
            raise
        self._learn(selection.transitions, selection.open_until)
        return selection

    async def _after_success(
        self, run: _Run, deployment: Deployment, response: ChatResponse, started: float
    ) -> ExecutionResult | AttemptResult:
        """An answer from the provider: the execution's result, or, after a round of the
        agent's tools, the attempt to report with the next provider call."""
        elapsed = self._clock.monotonic() - started
        self._charge(run, deployment, response.usage)
        run.steps.append(
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
            deployment.id, run.request.execution_id, Outcome.SUCCESS, elapsed, run.probe
        )
        if response.tool_calls and run.request.tools:
            handed = client_calls(run.agent.tools, response.tool_calls)
            if handed:
                # Calls to the caller's tools end the execution: the caller runs them and sends
                # the results in its next request. The agent's own calls of the same turn are
                # not run; the model asks again once it has the caller's results.
                names = ", ".join(call.name for call in handed)
                dropped = len(response.tool_calls) - len(handed)
                detail = f"{names} (agent calls dropped: {dropped})" if dropped else names
                run.steps.append(Step("tool", outcome="client", detail=detail[:300]))
                await self._complete(run, succeeded, Outcome.SUCCESS)
                result = self._result(
                    run,
                    ExecutionStatus.SUCCEEDED,
                    response.content,
                    deployment.model,
                    deployment.id,
                )
                return replace(result, finish_reason="tool_calls", tool_calls=handed)
        if response.tool_calls and run.agent.tools:
            try:
                refusal = await self._tool_round(run, response)
            except asyncio.CancelledError:
                await asyncio.shield(self._complete(run, succeeded, Outcome.IGNORED))
                raise
            if refusal is None:
                return succeeded
            # The provider answered; the tool failed: no breaker counts it.
            await self._complete(run, succeeded, Outcome.IGNORED)
            policy = policy_for(refusal)
            return self._degraded(
                run, policy.reason, policy.message, deployment.model, deployment.id
            )
        await self._complete(run, succeeded, Outcome.SUCCESS)
        return self._result(
            run,
            ExecutionStatus.SUCCEEDED,
            response.content,
            deployment.model,
            deployment.id,
            finish_reason=response.finish_reason,
        )

    async def _tool_round(self, run: _Run, response: ChatResponse) -> ToolFailed | None:
        """Run one round of tool calls, in order, and extend the transcript with the results.

        Returns the failure that ends the execution (step cap, a tool error), or None to go on.
        """
        agent = run.agent
        if self._tools is None or run.tool_rounds >= agent.max_tool_steps:
            detail = "no tool runner" if self._tools is None else f"{agent.max_tool_steps} rounds"
            run.steps.append(Step("refused", outcome="tool_step_cap", detail=detail))
            return ToolFailed(f"tool step cap reached ({detail})")
        run.tool_rounds += 1
        results = []
        for call in response.tool_calls:
            started = self._clock.monotonic()
            try:
                results.append(
                    await self._tools.run_named(agent.tools, call, timeout_s=self._remaining(run))
                )
            except ToolFailed as failure:
                run.steps.append(
                    Step(
                        "tool",
                        outcome="ToolFailed",
                        detail=f"{call.name}: {failure.message}"[:300],
                        latency_ms=(self._clock.monotonic() - started) * 1000,
                    )
                )
                return failure
            run.steps.append(
                Step(
                    "tool",
                    outcome="ok",
                    detail=call.name,
                    latency_ms=(self._clock.monotonic() - started) * 1000,
                )
            )
        run.messages = run.messages + tool_messages(
            response.tool_calls, results, content=response.content
        )
        return None

    async def _attempt(
        self, run: _Run, deployment: Deployment, remaining: float, on_token: OnToken | None
    ) -> ChatResponse:
        # The attempt's timeout (module docstring): two subtractions and a min() per attempt.
        budget = remaining - self._kept_for_later(run)
        cap = run.agent.attempt_timeout_s
        if cap is not None and cap < budget:
            budget = cap
        if budget < self._retry.min_attempt_s:
            # Nothing was sent: no breaker counts it; the next model (if any) has its share.
            raise DeadlineReached("no time left for an attempt on this model", phase="total")
        relay: OnToken | None = None
        first_token: asyncio.Timeout | None = None  # a stream's timeout until its first token
        if on_token is not None:
            sink = on_token
            if budget < remaining:
                first_token = asyncio.timeout(budget)
            waiting = first_token

            async def relay(text: str) -> None:
                nonlocal waiting
                if waiting is not None:  # the first token: the deadline bounds the rest
                    waiting.reschedule(None)
                    waiting = None
                run.streamed_chars += len(text)
                self._events.execution_token(run.request.execution_id, text)
                await sink(text)

        request = ChatRequest(
            model=deployment.upstream_model,
            messages=run.messages,
            max_tokens=run.max_tokens,
            tools=run.agent.tools,
        )
        if run.request.tools:  # the caller's tools ride along with the agent's
            request = replace(
                request,
                tools=run.agent.tools + run.request.tools,
                tool_choice=effective_tool_choice(run.request.tool_choice, run.tool_rounds),
            )
        if first_token is None:
            return await self._providers.chat(deployment, request, timeout_s=budget, on_token=relay)
        try:
            async with first_token:
                return await self._providers.chat(
                    deployment, request, timeout_s=remaining, on_token=relay
                )
        except TimeoutError:
            if not first_token.expired():
                raise
            # As the provider charges a stream that times out: the prompt, estimated.
            raise Timeout(
                f"no first token within {budget:.3f}s",
                phase="first_token",
                input_tokens=estimate_messages(run.messages),
            ) from None

    def _kept_for_later(self, run: _Run) -> float:
        """The part of the time left that the current model may not use: an equal share of the
        deadline for each model after it in the chain (``attempt_timeout_s`` if shorter)."""
        later = len(run.chain) - run.model_index - 1
        if later <= 0:
            return 0.0
        agent = run.agent
        share = agent.timeout_s / len(run.chain)
        if agent.attempt_timeout_s is not None and agent.attempt_timeout_s < share:
            share = agent.attempt_timeout_s
        return later * share

    # --- helpers ----------------------------------------------------------------------------

    async def _cached_result(
        self, run: _Run, hit: CachedAnswer, on_token: OnToken | None
    ) -> ExecutionResult:
        """A cache hit: nothing admitted (no lease, rate budget or reservation), no provider
        call, $0; what it saved is recorded. Usage stays 0 (no provider processed tokens); the
        original usage is in the step."""
        run.steps.append(
            Step(
                "cache",
                model=hit.model,
                deployment=hit.deployment,
                outcome="hit",
                detail=f"saved {hit.cost_usd} USD; original {hit.usage.input_tokens}/"
                f"{hit.usage.output_tokens} tokens",
            )
        )
        if on_token is not None and hit.output:
            self._events.execution_token(run.request.execution_id, hit.output)
            await on_token(hit.output)
        result = self._result(run, ExecutionStatus.SUCCEEDED, hit.output, hit.model, hit.deployment)
        return replace(result, cached=True, saved_usd=hit.cost_usd)

    async def _cached(self, run: _Run) -> CachedAnswer | None:
        """The cached answer, looked up on its own (a refusal before admission)."""
        assert self._cache is not None
        assert run.cache_key is not None
        return await self._cache.get(run.cache_key)

    def _cache_store(self, run: _Run, result: ExecutionResult) -> None:
        """Store a cacheable answer off the critical path (a tracked background task)."""
        if self._cache is None or run.cache_key is None or not should_cache(result):
            return
        task = asyncio.ensure_future(
            self._cache.put(run.cache_key, CachedAnswer.from_result(result), run.agent.cache_ttl_s)
        )
        self._cache_writes.add(task)
        task.add_done_callback(self._cache_writes.discard)

    async def drain_cache_writes(self) -> None:
        """Wait for pending cache writes (call before the event loop closes), and give the
        background state retries a last chance before cancelling them."""
        if self._cache_writes:
            await asyncio.gather(*self._cache_writes, return_exceptions=True)
        if self._background:
            _, pending = await asyncio.wait(set(self._background), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _give_back_later(
        self,
        run: _Run,
        *,
        candidates: tuple[Candidate, ...] = (),
        budget_keys: tuple[str, ...] = (),
        rate_keys: tuple[str, ...] = (),
    ) -> None:
        """Give back, in the background, what a state call whose answer this run never had
        may have taken for it (its lease on ``candidates``, its reservations and rate-log
        entries), nothing charged; its lease id is marked gone for the lease's lifetime, so the
        call takes nothing if it lands later still."""
        abandon = Abandon(
            lease_ids=(run.request.execution_id,),
            deployment_ids=tuple(c.deployment_id for c in candidates),
            budget_keys=budget_keys,
            rate_keys=rate_keys,
            charge=False,
            tombstone_ttl_s=run.lease_ttl,
        )
        self._retry_later(lambda: self._state.abandon(abandon), "abandon", run.lease_ttl)

    def _retry_later(
        self, call: Callable[[], Awaitable[object]], what: str, give_up_after_s: float
    ) -> None:
        """Run ``call`` in the background until the state store takes it (it is idempotent),
        backing off; give up after ``give_up_after_s`` (the leases and reservations it concerns
        have expired by then)."""

        async def until_done() -> None:
            give_up = self._clock.monotonic() + give_up_after_s
            delay = 0.25
            while True:
                try:
                    await call()
                    return
                except StateUnavailable:
                    if self._clock.monotonic() + delay > give_up:
                        log.error("gave up retrying a state %s after %.0f s", what, give_up_after_s)
                        return
                await self._clock.sleep(delay)
                delay = min(delay * 2, 1.0)

        task = asyncio.ensure_future(until_done())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _choose_models(
        self, run: _Run, windows: tuple[BudgetHold, ...]
    ) -> tuple[tuple[str, ...], str]:
        budget_left = (
            [self._budget_left[w.key] for w in windows if w.key in self._budget_left]
            if run.agent.cheap_model
            else []
        )
        return choose_models(run.agent, run.request, run.messages, budget_left)

    def _remember_budgets(self, holds: tuple[BudgetHold, ...], left: dict[str, int]) -> None:
        for hold in holds:
            if hold.key in left:
                self._budget_left[hold.key] = (left[hold.key], hold.limit)

    def _worst_case(self, chain: tuple[str, ...], input_tokens: int, max_tokens: int) -> int:
        deployments = tuple(d for model in chain for d in self._config.deployments(model))
        return worst_case_micros(deployments, input_tokens, max_tokens) if deployments else 0

    def _remaining(self, run: _Run) -> float:
        return run.deadline - self._clock.monotonic()

    def _retry_delay(self, run: _Run, failure: ProviderFailure, retries: int) -> float | None:
        """The wait before the next attempt, or None if that attempt could not finish in time."""
        delay = (
            failure.retry_after
            if failure.retry_after is not None
            else self._retry.backoff(retries, self._rng)
        )
        # A retry may not eat into the time kept for the models after this one either.
        if self._remaining(run) - self._kept_for_later(run) - delay < self._retry.min_attempt_s:
            return None
        return delay

    def _candidates(self, model: str) -> tuple[Candidate, ...]:
        deployments = self._config.deployments(model)
        cached = self._all_candidates.get(model)
        if cached is None or cached[0] is not deployments:  # a new config snapshot
            cached = (
                deployments,
                tuple(Candidate(d.id, d.max_concurrency, d.weight) for d in deployments),
            )
            self._all_candidates[model] = cached
        if not self._open_until:  # no breaker known to be open: all of them
            return cached[1]
        now = self._clock.now()
        if all(until <= now for until in self._open_until.values()):
            self._open_until.clear()  # every one of them is due for a probe: ask the state
            return cached[1]
        return tuple(
            c
            for c in cached[1]
            if self._open_until.get(f"deployment:{c.deployment_id}", 0.0) <= now
        )

    def _first_usable(self, chain: tuple[str, ...], now: float) -> int | None:
        for index, model in enumerate(chain):
            if self._candidates(model):
                return index
        return None

    def _deployment(self, model: str, deployment_id: int) -> Deployment:
        for deployment in self._config.deployments(model):
            if deployment.id == deployment_id:
                return deployment
        raise LookupError(f"deployment {deployment_id} of {model} disappeared")

    def _learn(
        self,
        transitions: tuple[Transition, ...],
        open_until: dict[str, float],
        agent_breaker: BreakerConfig | None = None,
    ) -> None:
        """Remember breakers known to be open (to reject locally) and publish transitions."""
        for key, until in open_until.items():
            self._open_until[key] = until
        for transition in transitions:
            if transition.to_state == BreakerState.OPEN:
                config = (
                    agent_breaker
                    if agent_breaker is not None and transition.key.startswith("agent:")
                    else self._deployment_breaker
                )
                self._open_until[transition.key] = transition.at + config.recovery_timeout_s
            else:
                self._open_until.pop(transition.key, None)
            self._events.breaker_transition(transition)

    def _charge(self, run: _Run, deployment: Deployment, usage: Usage) -> None:
        run.usage = run.usage + usage
        run.cost += price(deployment, usage)

    def _degraded(
        self,
        run: _Run,
        reason: FallbackReason,
        message: MessageKey,
        model: str | None,
        deployment: int | None,
        *,
        retry_after: float | None = None,
    ) -> ExecutionResult:
        run.fallback_reason = reason
        text = run.agent.fallback_messages.get(message) or DEFAULT_FALLBACK_MESSAGES[message]
        return self._result(
            run, ExecutionStatus.DEGRADED, text, model, deployment, retry_after=retry_after
        )

    def _result(
        self,
        run: _Run,
        status: ExecutionStatus,
        output: str,
        model: str | None,
        deployment: int | None,
        *,
        error: dict[str, str] | None = None,
        finish_reason: str = "stop",
        retry_after: float | None = None,
    ) -> ExecutionResult:
        # Every field set here, once: dataclasses.replace() afterwards costs ~10 µs a copy.
        return ExecutionResult(
            execution_id=run.request.execution_id,
            agent=run.agent.name,
            status=status,
            output=output,
            model=model,
            deployment=deployment,
            attempts=run.attempts,
            fallback_used=run.fallback_reason is not None,
            fallback_reason=run.fallback_reason,
            cached=False,
            usage=run.usage,
            cost_usd=run.cost,
            latency_ms=(self._clock.monotonic() - run.started) * 1000,
            created_at=run.created_at,
            finished_at=self._clock.now(),
            steps=tuple(run.steps),
            error=error,
            session_id=run.request.session_id,
            api_key_id=run.request.api_key_id,
            metadata=run.request.metadata,
            input=run.request.messages,
            model_choice=run.model_choice,
            finish_reason=finish_reason,
            retry_after=retry_after,
        )

    def _unavailable(self, run: _Run, exc: DependencyUnavailable) -> ExecutionResult:
        return self._result(
            run,
            ExecutionStatus.FAILED,
            "",
            None,
            None,
            error={"type": exc.kind, "message": str(exc)[:500]},
            retry_after=1.0,
        )

    async def _finish_aborted(self, run: _Run, result: ExecutionResult) -> None:
        """Settle and journal an execution that ended by a cancel or an exception: whatever
        raised, a lease and reservations that admission took are given back (what was spent is
        charged). Shielded: a second cancel does not stop it."""
        if run.final is None and run.admitted:
            run.final = self._abort_completion(run)
        with contextlib.suppress(Exception):
            await asyncio.shield(self._finish(run, result))

    async def _finish(self, run: _Run, result: ExecutionResult) -> None:
        """Settle the shared state and journal the result, concurrently, then publish.

        A failure here must not take the answer away from a caller who has already paid for
        it: it is logged loudly instead (leases and reservations expire by themselves)."""
        final, run.final = run.final, None

        async def settle() -> None:
            if final is None:
                return
            try:
                self._learn(await self._state.complete(final), {}, run.agent.breaker)
            except StateUnavailable:
                # Settling twice counts once, so it is sent again until the store takes it;
                # until then the reservation stands (and would become spend if it expired).
                self._retry_later(lambda: self._state.complete(final), "settlement", run.lease_ttl)
                raise

        async def journal() -> None:
            started = run.journaled
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
