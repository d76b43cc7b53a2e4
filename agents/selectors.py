"""Reads for agents, providers and keys."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from agents.models import Agent, ModelDeployment
from budgets.models import Budget, BudgetScope, BudgetWindow


@dataclass(frozen=True)
class AgentRow:
    name: str
    description: str
    model: str
    fallback_models: list[str]
    deployments: int
    timeout_s: float
    daily_budget_usd: Decimal | None
    enabled: bool


def agent_list_with_models() -> list[AgentRow]:
    """Agents with their deployment counts and daily budgets, in three queries."""
    deployments: dict[str, int] = {}
    for name in ModelDeployment.objects.filter(enabled=True).values_list("name", flat=True):
        deployments[name] = deployments.get(name, 0) + 1
    budgets = dict(
        Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY).values_list(
            "agent_id", "limit_usd"
        )
    )
    return [
        AgentRow(
            name=agent.name,
            description=agent.description,
            model=agent.model,
            fallback_models=list(agent.fallback_models),
            deployments=deployments.get(agent.model, 0),
            timeout_s=agent.timeout_s,
            daily_budget_usd=budgets.get(agent.pk),
            enabled=agent.enabled,
        )
        for agent in Agent.objects.order_by("name")
    ]
