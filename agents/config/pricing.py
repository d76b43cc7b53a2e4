"""No unpriced model under a budget: the rule ``apply`` (and so the agents API) enforces.

A budget cannot be enforced on a call whose price is unknown, so the runtime refuses such a call
(fail closed: the execution fails with ``price_unknown``). A configuration that would make every
call of an agent fail that way is refused when it is written instead, naming the entry of the
document that makes it so.

The check runs on the database as the document left it, inside ``apply``'s transaction: the
document merged with what it does not mention (or pruned), so a model that loses its prices, a
new global budget and an agent that moves to an unpriced model are all caught the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.config.schema import ConfigDocument
from agents.models import Agent, ApiKey, ModelDeployment
from budgets.models import Budget, BudgetScope


@dataclass(frozen=True)
class Unpriced:
    agent: str
    field: str  # model, fallback_models[1], cheap_model
    model: str
    deployments: tuple[int, ...]
    budgets: tuple[tuple[str, str | None, str], ...]  # (scope, target, in words) that apply


def _budget_words(scope: str, window: str, target: str | None) -> str:
    if scope == BudgetScope.GLOBAL:
        return f"the global {window} budget"
    if scope == BudgetScope.AGENT:
        return f"its {window} budget"
    return f"the {window} budget of API key {target}"


def unpriced_under_budget() -> list[Unpriced]:
    """Every (enabled agent, model it may call) where a deployment of the model has no price
    while a budget applies to the agent (its own, a global one, or one of an API key that may
    use it). Five small queries; only ``apply`` calls it."""
    unpriced: dict[str, list[int]] = {}
    for name, pk, input_price, output_price in ModelDeployment.objects.filter(
        enabled=True
    ).values_list("name", "pk", "input_usd_per_mtok", "output_usd_per_mtok"):
        if input_price is None or output_price is None:
            unpriced.setdefault(name, []).append(pk)
    if not unpriced:
        return []
    Applies = tuple[str, str | None, str]
    everyone: list[Applies] = []
    per_agent: dict[str, list[Applies]] = {}
    per_key: dict[int, list[Applies]] = {}
    for scope, window, owner, key_id, prefix in Budget.objects.order_by("id").values_list(
        "scope", "window", "agent__name", "api_key_id", "api_key__prefix"
    ):
        if scope == BudgetScope.GLOBAL:
            everyone.append((scope, None, _budget_words(scope, window, None)))
        elif scope == BudgetScope.AGENT and owner is not None:
            per_agent.setdefault(owner, []).append(
                (scope, owner, _budget_words(scope, window, None))
            )
        elif key_id is not None:
            words = _budget_words(scope, window, prefix)
            per_key.setdefault(key_id, []).append((scope, prefix, words))
    keys_for_all: list[Applies] = []  # budgets of keys that may use every agent
    keys_for: dict[str, list[Applies]] = {}
    if per_key:
        for key in ApiKey.objects.filter(pk__in=per_key, revoked_at__isnull=True).prefetch_related(
            "agents"
        ):
            allowed = [allowed_agent.name for allowed_agent in key.agents.all()]
            if not allowed:
                keys_for_all += per_key[key.pk]
            for name in allowed:
                keys_for.setdefault(name, []).extend(per_key[key.pk])
    found = []
    for agent in Agent.objects.filter(enabled=True).order_by("name"):
        budgets = tuple(
            everyone + per_agent.get(agent.name, []) + keys_for_all + keys_for.get(agent.name, [])
        )
        if not budgets:
            continue
        chain = [("model", agent.model)]
        chain += [(f"fallback_models[{i}]", m) for i, m in enumerate(agent.fallback_models)]
        if agent.cheap_model:
            chain.append(("cheap_model", agent.cheap_model))
        for field, model in chain:
            if model in unpriced:
                found.append(Unpriced(agent.name, field, model, tuple(unpriced[model]), budgets))
    return found


def unpriced_errors(doc: ConfigDocument) -> list[str]:
    """``path: message`` for each :func:`unpriced_under_budget` finding this document is party
    to: located at the agent's entry if it has one, else at the model's, else at the budget's.
    A finding the document has no part in (the database was already so) is not its error; the
    runtime still refuses those calls."""
    agents = {spec.name: i for i, spec in enumerate(doc.agents)}
    models: dict[str, int] = {}
    for i, spec in enumerate(doc.models):
        if spec.input_usd_per_mtok is None:
            models.setdefault(spec.name, i)
    errors = []
    for item in unpriced_under_budget():
        which = "deployment" if len(item.deployments) == 1 else "deployments"
        problem = (
            f"model {item.model!r} has no price ({which} "
            f"{', '.join(str(d) for d in item.deployments)}) and agent {item.agent!r} is under "
            f"{' and '.join(words for _, _, words in item.budgets)}, which cannot be enforced "
            "on a call of unknown price (every call would be refused): set input_usd_per_mtok "
            "and output_usd_per_mtok on the model, or remove the budget"
        )
        if item.agent in agents:
            errors.append(f"agents[{agents[item.agent]}].{item.field}: {problem}")
        elif item.model in models:
            errors.append(f"models[{models[item.model]}]: {problem}")
        else:
            applying = {(scope, target) for scope, target, _ in item.budgets}
            where = next(
                (i for i, b in enumerate(doc.budgets) if (b.scope, b.target) in applying), None
            )
            if where is not None:
                errors.append(f"budgets[{where}]: {problem}")
    return errors
