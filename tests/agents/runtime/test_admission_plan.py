"""The admission plan: what an execution asks the shared state for, decided without a store."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Any

from agents.runtime.budgets import holds_for, worst_case_micros
from agents.runtime.cache import cache_key, cache_scope
from agents.runtime.execution.context import AdmissionPlan, Execution
from agents.runtime.execution.plan import BudgetsSeen, plan_admission
from agents.runtime.providers.base import estimate_messages
from agents.runtime.state import BreakerConfig, BudgetHold, Candidate, RateLimit
from agents.runtime.types import (
    BudgetRule,
    Deployment,
    ExecutionRequest,
    Message,
    RateLimits,
    ToolSpec,
)
from tests.agents.runtime.support import agent, deployment

NOW = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DAILY = BudgetRule(id=1, scope="global", target="*", window="daily", limit_usd=Decimal("5"))
MONTHLY = BudgetRule(id=2, scope="agent", target="support", window="monthly", limit_usd=Decimal(9))
DEPLOYMENTS = {
    "primary": (deployment(1, "primary", price="2"), deployment(3, "primary", price="1")),
    "backup": (deployment(2, "backup", price="3"),),
    "cheap": (deployment(4, "cheap", price="0.1"),),
}
MESSAGES = (Message("user", "where is my order?"),)


def deployments(model: str) -> tuple[Deployment, ...]:
    return DEPLOYMENTS.get(model, ())


def execution(agent_overrides: dict[str, Any] | None = None, **request: Any) -> Execution:
    return Execution.begin(
        ExecutionRequest(agent="support", messages=MESSAGES, execution_id="e-1", **request),
        agent(**(agent_overrides or {})),
        monotonic=100.0,
        now=NOW,
    )


def plan(
    ex: Execution | None = None,
    rules: tuple[BudgetRule, ...] = (),
    *,
    budgets: BudgetsSeen | None = None,
    cacheable: bool = False,
    by_model: Any = deployments,
) -> AdmissionPlan:
    return plan_admission(
        ex or execution(),
        MESSAGES,
        rules,
        by_model,
        budgets or BudgetsSeen(),
        cacheable=cacheable,
    )


def test_a_plain_agent_asks_for_its_chain_and_nothing_else() -> None:
    planned = plan()
    assert planned.chain == ("primary", "backup")
    assert planned.model_choice == "standard"
    assert planned.rate_limits == ()
    assert planned.holds == ()
    assert planned.budget_keys == ()
    assert planned.reserved == 0
    assert planned.settle == ()
    assert planned.unpriced == ()
    assert planned.cache_key is None
    assert planned.look_up is False


def test_the_agent_and_key_rate_limits_are_counted_and_only_tpm_is_settled() -> None:
    ex = execution(
        {"rate_limits": RateLimits(rpm=10, tpm=1000), "max_tokens": 200},
        api_key_id=7,
        api_key_limits=RateLimits(rpm=5, tpm=500),
    )
    tokens = estimate_messages(MESSAGES) + 200
    planned = plan(ex)
    assert planned.rate_limits == (
        RateLimit("rpm:agent:support", 10, 60.0, 1),
        RateLimit("tpm:agent:support", 1000, 60.0, tokens),
        RateLimit("rpm:key:7", 5, 60.0, 1),
        RateLimit("tpm:key:7", 500, 60.0, tokens),
    )
    assert planned.rate_keys == ("rpm:agent:support", "tpm:agent:support", "rpm:key:7", "tpm:key:7")
    assert planned.settle == (("tpm:agent:support", 60.0), ("tpm:key:7", 60.0))


def test_key_limits_without_a_key_count_nothing() -> None:
    planned = plan(execution(api_key_limits=RateLimits(rpm=5, tpm=500)))
    assert planned.rate_limits == ()


def test_every_budget_window_holds_the_worst_case_of_the_whole_chain() -> None:
    ex = execution({"max_tokens": 100})
    planned = plan(ex, (DAILY, MONTHLY))
    chain = (*DEPLOYMENTS["primary"], *DEPLOYMENTS["backup"])
    worst = worst_case_micros(chain, estimate_messages(MESSAGES), 100)
    assert worst == worst_case_micros(DEPLOYMENTS["backup"], estimate_messages(MESSAGES), 100)
    assert planned.reserved == worst
    windows = holds_for((DAILY, MONTHLY), NOW, 0)
    assert planned.holds == tuple(BudgetHold(w.key, w.limit, worst, w.ttl_s) for w in windows)
    assert planned.budget_keys == ("budget:1:2026-01-01", "budget:2:2026-01")
    assert planned.unpriced == ()


def test_the_windows_are_those_of_the_executions_creation_time() -> None:
    late = Execution.begin(
        ExecutionRequest(agent="support", messages=MESSAGES, execution_id="e-2"),
        agent(),
        monotonic=0.0,
        now=NOW - 1,  # 2025-12-31 23:59:59 UTC
    )
    assert plan(late, (DAILY, MONTHLY)).budget_keys == ("budget:1:2025-12-31", "budget:2:2025-12")


def test_an_unpriced_deployment_under_a_budget_is_named_and_nothing_is_reserved() -> None:
    unpriced = replace(deployment(5, "backup"), input_usd_per_mtok=None)
    by_model = {**DEPLOYMENTS, "backup": (unpriced, unpriced, *DEPLOYMENTS["backup"])}
    planned = plan(rules=(DAILY,), by_model=lambda m: by_model.get(m, ()))
    assert planned.unpriced == ("backup (deployment 5)",)
    assert planned.holds == ()
    assert planned.reserved == 0


def test_an_unpriced_deployment_without_a_budget_is_not_refused() -> None:
    unpriced = replace(deployment(5, "backup"), output_usd_per_mtok=None)
    assert plan(by_model=lambda m: (unpriced,)).unpriced == ()


def test_the_answer_is_looked_up_under_the_key_of_its_chain_and_scope() -> None:
    ex = execution({"cache_ttl_s": 60}, api_key_id=3)
    planned = plan(ex, cacheable=True)
    assert planned.cache_key == cache_key(
        agent="support",
        model_chain=("primary", "backup"),
        messages=MESSAGES,
        max_tokens=ex.max_tokens,
        tools=(),
        scope=cache_scope(3),
    )
    assert planned.look_up is True


def test_a_bypassing_request_is_not_looked_up_but_its_answer_still_has_a_key() -> None:
    planned = plan(execution({"cache_ttl_s": 60}, bypass_cache=True), cacheable=True)
    assert planned.cache_key is not None
    assert planned.look_up is False


def test_nothing_is_cached_without_a_cache_a_ttl_or_with_client_tools() -> None:
    client_tool = ToolSpec(
        name="lookup", kind="client", description="Look up", parameters={"type": "object"}
    )
    assert plan(execution({"cache_ttl_s": 60}), cacheable=False).cache_key is None
    assert plan(execution(), cacheable=True).cache_key is None
    with_tools = execution({"cache_ttl_s": 60}, tools=(client_tool,))
    assert plan(with_tools, cacheable=True).cache_key is None


def test_a_budget_seen_nearly_spent_sends_everything_to_the_cheap_model() -> None:
    ex = execution({"cheap_model": "cheap", "cheap_max_input_tokens": 0})
    assert plan(ex, (DAILY,)).model_choice == "standard"
    seen = BudgetsSeen()
    (hold,) = holds_for((DAILY,), NOW, 0)
    seen.remember((hold,), {hold.key: hold.limit // 10})  # 10% left
    low = plan(ex, (DAILY,), budgets=seen)
    assert low.model_choice == "cheap:budget_low"
    assert low.chain == ("cheap", "backup")
    # Reserved for the chain the plan chose, not the one it replaced.
    assert low.reserved == worst_case_micros(
        (*DEPLOYMENTS["cheap"], *DEPLOYMENTS["backup"]), estimate_messages(MESSAGES), ex.max_tokens
    )


def test_budgets_seen_remembers_only_the_budgets_that_were_answered() -> None:
    seen = BudgetsSeen()
    a = BudgetHold("budget:1:d", 100, 0, 60.0)
    b = BudgetHold("budget:2:d", 200, 0, 60.0)
    seen.remember((a, b), {"budget:2:d": 50, "budget:9:d": 1})
    assert seen.left((a, b)) == [(50, 200)]
    seen.remember((a,), {"budget:1:d": 70})
    assert seen.left((a, b)) == [(70, 100), (50, 200)]


def test_the_admit_request_carries_the_plan_the_candidates_and_the_cache_lookup() -> None:
    ex = execution({"rate_limits": RateLimits(rpm=10)})
    planned = plan(ex, (DAILY,))
    candidates = (Candidate(1, 100), Candidate(3, 100))
    breaker = BreakerConfig(failure_threshold=2)
    admit = planned.request(ex, candidates, breaker, "p:cache:k")
    assert admit.lease_id == "e-1"
    assert admit.lease_ttl_s == ex.agent.timeout_s + 30.0
    assert admit.agent_breaker_key == "agent:support"
    assert admit.agent_breaker == ex.agent.breaker
    assert admit.rate_limits == planned.rate_limits
    assert admit.candidates == candidates
    assert admit.deployment_breaker == breaker
    assert admit.budgets == planned.holds
    assert admit.cache_key == "p:cache:k"
