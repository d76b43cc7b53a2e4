"""A budget row as the runtime enforces it: the one conversion from ``Budget`` to ``BudgetRule``."""

from __future__ import annotations

from agents.runtime.types import BudgetRule
from budgets.models import Budget


def budget_rule(budget: Budget) -> BudgetRule:
    target = "*"
    if budget.scope == "agent" and budget.agent is not None:
        target = budget.agent.name
    elif budget.scope == "api_key":
        target = str(budget.api_key_id)
    return BudgetRule(
        id=budget.pk,
        scope=budget.scope,  # type: ignore[arg-type]
        target=target,
        window=budget.window,  # type: ignore[arg-type]
        limit_usd=budget.limit_usd,
        timezone=budget.timezone,
        paused=budget.paused,
        raise_usd=budget.raise_usd,
        raise_until=budget.raise_until.timestamp() if budget.raise_until else None,
    )
