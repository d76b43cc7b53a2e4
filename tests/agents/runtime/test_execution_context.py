"""An execution's context: givens and grants that cannot change, progress that moves, and
the reports built from them."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest

from agents.runtime.budgets import price
from agents.runtime.clock import FakeClock
from agents.runtime.execution import results
from agents.runtime.execution.context import AdmissionPlan, Admitted, Execution, Progress
from agents.runtime.state import BreakerConfig, BudgetHold, Outcome, RateLimit
from agents.runtime.types import ExecutionRequest, ExecutionStatus, Message, Step, Usage
from tests.agents.runtime.support import agent, deployment

BREAKER = BreakerConfig(failure_threshold=2)
MESSAGES = (Message("user", "hello"),)


def execution(clock: FakeClock, max_tokens: int | None = None) -> Execution:
    request = ExecutionRequest(
        agent="support", messages=MESSAGES, execution_id="e-1", max_tokens=max_tokens
    )
    return Execution.begin(
        request, agent(max_tokens=500), monotonic=clock.monotonic(), now=clock.now()
    )


def admitted(**overrides: object) -> Admitted:
    plan = AdmissionPlan(
        chain=("primary", "backup"),
        model_choice="standard",
        cache_key=None,
        look_up=False,
        unpriced=(),
        rate_limits=(
            RateLimit("rpm:agent:support", 10, 60.0, 1),
            RateLimit("tpm:agent:support", 1000, 60.0, 600),
        ),
        holds=(BudgetHold("budget:1:d", 10_000, 700, 60.0), BudgetHold("budget:2:m", 9, 700, 60)),
        reserved=700,
    )
    fields: dict[str, object] = {
        "plan": plan,
        "model_index": 1,
        "deployment_id": 2,
        "probe": True,
        "agent_probe": True,
    }
    return Admitted(**{**fields, **overrides})  # type: ignore[arg-type]


def test_an_execution_begins_with_its_deadline_token_cap_breaker_and_lease_lifetime() -> None:
    clock = FakeClock()
    ex = execution(clock, max_tokens=2000)
    assert ex.started == clock.monotonic()
    assert ex.created_at == clock.now()
    assert ex.deadline == ex.started + 10.0  # the agent's timeout_s
    assert ex.max_tokens == 500  # a request never raises the agent's cap
    assert execution(clock, max_tokens=100).max_tokens == 100
    assert execution(clock).max_tokens == 500
    assert ex.agent_key == "agent:support"
    assert ex.lease_ttl == 40.0  # the deadline, and 30 s of slack


def test_the_givens_and_the_grants_cannot_change() -> None:
    ex = execution(FakeClock())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.deadline = 0.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        admitted().deployment_id = 1  # type: ignore[misc]


def test_progress_starts_with_nothing_done_spent_or_held() -> None:
    progress = Progress(MESSAGES)
    assert progress.messages == MESSAGES
    assert (progress.attempts, progress.usage, progress.cost) == (0, Usage(), Decimal(0))
    assert progress.steps == []
    assert progress.lease is None
    assert progress.admitted is None
    assert progress.final is None
    assert Progress(MESSAGES).steps is not progress.steps


def test_admission_hands_the_progress_its_model_lease_and_reservation() -> None:
    progress = Progress(MESSAGES)
    grant = admitted()
    progress.admit(grant)
    assert progress.admitted is grant
    assert (progress.model_index, progress.lease, progress.probe) == (1, 2, True)
    assert progress.reserved == 700


def test_charging_adds_the_usage_and_its_price() -> None:
    progress = Progress(MESSAGES)
    priced = deployment(1, "primary", price="2")
    progress.charge(priced, Usage(10, 5))
    progress.charge(priced, Usage(1, 1))
    assert progress.usage == Usage(11, 6)
    assert progress.cost == price(priced, Usage(10, 5)) + price(priced, Usage(1, 1))


def test_a_result_reports_the_progress_and_its_time() -> None:
    clock = FakeClock()
    ex = execution(clock)
    progress = Progress(MESSAGES, model_choice="cheap:simple")
    progress.attempts = 2
    progress.steps.append(Step("attempt", outcome="ok"))
    progress.charge(deployment(1, "primary"), Usage(10, 5))
    clock.advance(1.5)
    result = results.result(clock, ex, progress, ExecutionStatus.SUCCEEDED, "hi", "primary", 1)
    assert (result.attempts, result.usage, result.cost_usd) == (2, Usage(10, 5), progress.cost)
    assert result.steps == (Step("attempt", outcome="ok"),)
    assert result.model_choice == "cheap:simple"
    assert result.latency_ms == 1500.0
    assert result.finished_at == ex.created_at + 1.5
    assert result.fallback_used is False


def test_a_degraded_result_records_its_reason_in_the_progress() -> None:
    clock = FakeClock()
    progress = Progress(MESSAGES)
    result = results.degraded(
        clock, execution(clock), progress, "rate_limited", "rate_limit", None, None, retry_after=2
    )
    assert progress.fallback_reason == "rate_limited"
    assert result.status == ExecutionStatus.DEGRADED
    assert (result.fallback_used, result.retry_after) == (True, 2)
    assert result.output  # the default fallback message


def test_only_the_last_report_settles_rate_limits_and_budgets() -> None:
    clock = FakeClock()
    ex, grant = execution(clock), admitted()
    progress = Progress(MESSAGES)
    progress.admit(grant)
    progress.charge(deployment(1, "primary"), Usage(10, 5))
    between = results.completion(clock, ex, grant, progress, BREAKER, None, None)
    assert between.agent_breaker_key is None
    assert (between.rate_settlements, between.budget_settlements) == ((), ())
    last = results.completion(clock, ex, grant, progress, BREAKER, None, Outcome.SUCCESS)
    assert last.agent_breaker_key == "agent:support"
    assert last.agent_outcome == Outcome.SUCCESS
    assert last.agent_probe is True
    assert last.rate_settlements == (("tpm:agent:support", 60.0, 15),)
    spent = 20  # 10 x 1 + 5 x 2 micro-USD
    assert last.budget_settlements == (("budget:1:d", spent), ("budget:2:m", spent))


def test_an_abort_gives_back_the_lease_held_and_settles_what_was_spent() -> None:
    clock = FakeClock()
    ex, grant = execution(clock), admitted()
    progress = Progress(MESSAGES)
    progress.admit(grant)
    final = results.abort_completion(clock, ex, grant, progress, BREAKER)
    assert final.attempt is not None
    assert (final.attempt.deployment_id, final.attempt.probe) == (2, True)
    assert final.attempt.outcome == Outcome.IGNORED
    assert final.agent_outcome == Outcome.IGNORED
    progress.lease = None  # given back by an earlier report
    assert results.abort_completion(clock, ex, grant, progress, BREAKER).attempt is None
