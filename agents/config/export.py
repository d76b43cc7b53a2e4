"""``config_export``: the database as a config document (the format ``apply`` reads).

``export | apply`` is a no-op. Secrets are never exported: a provider with a stored secret is
exported without it, and ``apply`` keeps a stored secret the file does not mention.
"""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from typing import Any

import yaml

from agents.models import Agent, ModelDeployment, Provider, ProviderKind
from agents.selectors import agent_spec_dict
from budgets.models import Budget, BudgetScope, BudgetWindow
from incidents.models import NotificationChannel


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def agent_export(agent: Agent, daily_budget_usd: Decimal | None) -> dict[str, Any]:
    """The agent's item in the config document: the API's agent document, minus what the file
    leaves out when unset."""
    item = agent_spec_dict(agent, daily_budget_usd)
    if not item["description"]:
        del item["description"]
    if item["cheap_model"] is None:
        del item["cheap_model"]
    if item["attempt_timeout_s"] is None:
        del item["attempt_timeout_s"]
    if item["max_concurrency"] is None:
        del item["max_concurrency"]
    if item["daily_budget_usd"] is None:
        del item["daily_budget_usd"]
    else:
        item["daily_budget_usd"] = _number(item["daily_budget_usd"])
    return item


def notification_export(channel: NotificationChannel) -> dict[str, Any]:
    """The channel's item in the config document (the API's channel document): secrets by
    variable name only, unset fields left out."""
    item: dict[str, Any] = {"name": channel.name, "kind": channel.kind}
    for name in ("url", "url_env", "secret_env"):
        if getattr(channel, name):
            item[name] = getattr(channel, name)
    if channel.to:
        item["to"] = list(channel.to)
    item["min_severity"] = channel.min_severity
    item["enabled"] = channel.enabled
    return item


def config_export() -> dict[str, Any]:
    providers = []
    for provider in Provider.objects.order_by("name"):
        item: dict[str, Any] = {"name": provider.name, "kind": provider.kind}
        if provider.base_url:
            item["base_url"] = provider.base_url
        if provider.api_key_env:
            item["api_key_env"] = provider.api_key_env
        if provider.kind == ProviderKind.SIMULATED and provider.simulation:
            item["simulation"] = dict(provider.simulation)
        providers.append(item)

    models = []
    for d in ModelDeployment.objects.select_related("provider").order_by(
        "name", "provider__name", "upstream_model"
    ):
        model: dict[str, Any] = {
            "name": d.name,
            "provider": d.provider.name,
            "upstream_model": d.upstream_model,
        }
        for price in ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok"):
            value = getattr(d, price)
            if value is not None:
                model[price] = _number(value)
        model.update(
            {"max_concurrency": d.max_concurrency, "weight": d.weight, "enabled": d.enabled}
        )
        models.append(model)

    daily = {
        b.agent_id: b.limit_usd
        for b in Budget.objects.filter(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY)
    }
    agents = [agent_export(agent, daily.get(agent.pk)) for agent in Agent.objects.order_by("name")]

    grouped: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(dict)
    budgets_qs = (
        Budget.objects.select_related("agent", "api_key")
        .exclude(scope=BudgetScope.AGENT, window=BudgetWindow.DAILY)
        .order_by("scope", "id")
    )
    for budget in budgets_qs:
        target = None if budget.scope == BudgetScope.GLOBAL else budget.target
        key = (budget.scope, target, budget.timezone, budget.warn_at_pct, budget.alert_at_pct)
        entry = grouped[key]
        if f"{budget.window}_limit_usd" in entry:  # pragma: no cover - unique per window
            continue
        entry.update({"scope": budget.scope} | ({"target": target} if target else {}))
        entry[f"{budget.window}_limit_usd"] = _number(budget.limit_usd)
        entry.update(
            {
                "timezone": budget.timezone,
                "warn_at_pct": budget.warn_at_pct,
                "alert_at_pct": budget.alert_at_pct,
            }
        )
    return {
        "providers": providers,
        "models": models,
        "agents": agents,
        "budgets": list(grouped.values()),
        "notifications": [
            notification_export(channel) for channel in NotificationChannel.objects.order_by("name")
        ],
    }


def export_yaml(document: Any) -> str:
    """``document`` as ``manage.py export`` writes it."""
    return yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


def config_export_yaml() -> str:
    return export_yaml(config_export())
