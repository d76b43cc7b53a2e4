"""The admission plan: what one execution asks the shared state for, decided before asking.

Pure: from the execution's givens, its transcript, the budgets that apply, the config's
deployments and what the last answers said of the budgets, :func:`plan_admission` decides the
model chain, the response-cache key, the rate limits to count, the budget holds to reserve and
what is refused before any round trip (a deployment without a price under a budget). The
executor then asks: one :class:`AdmitRequest` per model tried (:meth:`AdmissionPlan.request`).
"""

from __future__ import annotations

from agents.runtime.budgets import holds_for, worst_case_micros
from agents.runtime.cache import cache_key, cache_scope
from agents.runtime.choice import choose_models
from agents.runtime.execution.breakers import Deployments
from agents.runtime.execution.context import AdmissionPlan, Execution
from agents.runtime.providers.base import estimate_messages
from agents.runtime.state import BudgetHold, RateLimit
from agents.runtime.types import BudgetRule, Message

RATE_WINDOW_S = 60.0  # rpm and tpm limits count over the last minute


class BudgetsSeen:
    """Budget key -> (micro-USD left, limit) as the shared state last answered: drives the
    cheap-model rule without a round trip of its own (at most one execution stale)."""

    __slots__ = ("_left",)

    def __init__(self) -> None:
        self._left: dict[str, tuple[int, int]] = {}

    def left(self, holds: tuple[BudgetHold, ...]) -> list[tuple[int, int]]:
        """(left, limit) of those of ``holds`` whose budget has been seen."""
        return [self._left[h.key] for h in holds if h.key in self._left]

    def remember(self, holds: tuple[BudgetHold, ...], left: dict[str, int]) -> None:
        for hold in holds:
            if hold.key in left:
                self._left[hold.key] = (left[hold.key], hold.limit)


def worst_case(
    deployments: Deployments, chain: tuple[str, ...], input_tokens: int, max_tokens: int
) -> int:
    """The most one call may cost, in micro-USD, on any deployment of ``chain`` (all priced)."""
    found = tuple(d for model in chain for d in deployments(model))
    return worst_case_micros(found, input_tokens, max_tokens) if found else 0


def plan_admission(
    execution: Execution,
    messages: tuple[Message, ...],
    rules: tuple[BudgetRule, ...],
    deployments: Deployments,
    budgets: BudgetsSeen,
    *,
    cacheable: bool,
) -> AdmissionPlan:
    """What ``execution`` asks for at admission. ``rules``: the budgets that apply to it;
    ``cacheable``: a response cache is there (the agent's ``cache_ttl_s`` decides the rest)."""
    agent, request, max_tokens = execution.agent, execution.request, execution.max_tokens
    # The budget windows, once; chosen by the execution's created_at, the time its ledger entry
    # is filed under, so that counter and ledger agree even across midnight.
    windows = holds_for(rules, execution.created_at, 0) if rules else ()
    chain, model_choice = choose_models(
        agent, request, messages, budgets.left(windows) if agent.cheap_model else []
    )
    # Not with client tools: their definitions and tool_choice are not in the key.
    key = None
    if cacheable and agent.cache_ttl_s > 0 and not request.tools:
        key = cache_key(
            agent=agent.name,
            model_chain=chain,
            messages=messages,
            max_tokens=max_tokens,
            tools=agent.tools,
            scope=cache_scope(request.api_key_id),
        )
    unpriced: tuple[str, ...] = ()
    if rules:
        unpriced = tuple(
            sorted(
                {
                    f"{d.model} (deployment {d.id})"
                    for m in chain
                    for d in deployments(m)
                    if not d.priced
                }
            )
        )
    input_tokens = estimate_messages(messages)
    limits = []
    rates, key_rates, key_id = agent.rate_limits, request.api_key_limits, request.api_key_id
    if rates.rpm:
        limits.append(RateLimit(f"rpm:agent:{agent.name}", rates.rpm, RATE_WINDOW_S, 1))
    if rates.tpm:
        limits.append(
            RateLimit(
                f"tpm:agent:{agent.name}", rates.tpm, RATE_WINDOW_S, input_tokens + max_tokens
            )
        )
    if key_id is not None and key_rates.rpm:
        limits.append(RateLimit(f"rpm:key:{key_id}", key_rates.rpm, RATE_WINDOW_S, 1))
    if key_id is not None and key_rates.tpm:
        limits.append(
            RateLimit(f"tpm:key:{key_id}", key_rates.tpm, RATE_WINDOW_S, input_tokens + max_tokens)
        )
    holds: tuple[BudgetHold, ...] = ()
    reserved = 0
    if rules and not unpriced:  # unpriced: refused before admission, nothing to reserve
        reserved = worst_case(deployments, chain, input_tokens, max_tokens)
        holds = tuple(BudgetHold(w.key, w.limit, reserved, w.ttl_s) for w in windows)
    return AdmissionPlan(
        chain=chain,
        model_choice=model_choice,
        cache_key=key,
        look_up=key is not None and not request.bypass_cache,
        unpriced=unpriced,
        rate_limits=tuple(limits),
        holds=holds,
        reserved=reserved,
    )
