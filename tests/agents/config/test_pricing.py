"""An unpriced model under a budget is refused by ``apply`` (and so by the agents API), naming
the entry that makes it so: the runtime would refuse every call of that agent (``price_unknown``),
since a budget cannot be enforced on a call of unknown price."""

from __future__ import annotations

from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from agents.access.services import api_key_create
from agents.config.apply import ApplyResult, ConfigError, config_apply, config_parse
from agents.models import Agent, ModelDeployment
from budgets.models import Budget

pytestmark = pytest.mark.django_db

BASE = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: priced, provider: sim, upstream_model: p-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: free, provider: sim, upstream_model: f-1}
"""


def _apply(text: str, **options: Any) -> ApplyResult:
    return config_apply(document=config_parse(BASE + text), **options)


def _errors(text: str, *, base: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_apply(document=config_parse(BASE + text if base else text))
    return caught.value.errors


def _problem(agent: str, budgets: str, deployment: int | None = None) -> str:
    if deployment is None:
        deployment = ModelDeployment.objects.get(name="free").pk
    return (
        f"model 'free' has no price (deployment {deployment}) and agent {agent!r} is under "
        f"{budgets}, which cannot be enforced on a call of unknown price (every call would be "
        "refused): set input_usd_per_mtok and output_usd_per_mtok on the model, or remove the "
        "budget"
    )


def test_an_agent_with_its_own_daily_budget_on_an_unpriced_model_is_refused() -> None:
    errors = _errors(
        "agents:\n  - {name: ok, model: priced}\n  - {name: a, model: free, daily_budget_usd: 5}\n"
    )

    assert len(errors) == 1
    assert errors[0].startswith("agents[1].model: model 'free' has no price (deployment ")
    assert "agent 'a' is under its daily budget" in errors[0]
    assert not Agent.objects.exists()  # all or nothing
    assert not ModelDeployment.objects.exists()


@pytest.mark.parametrize(
    ("agent", "path"),
    [
        ("{name: a, model: free}", "agents[0].model"),
        ("{name: a, model: priced, fallback_models: [free]}", "agents[0].fallback_models[0]"),
        ("{name: a, model: priced, cheap_model: free}", "agents[0].cheap_model"),
    ],
)
def test_a_global_budget_covers_every_model_an_agent_may_call(agent: str, path: str) -> None:
    errors = _errors(f"agents: [{agent}]\nbudgets: [{{scope: global, monthly_limit_usd: 100}}]\n")

    assert [line.split(": ", 1)[0] for line in errors] == [path]
    assert "the global monthly budget" in errors[0]


def test_without_any_budget_an_unpriced_model_is_allowed() -> None:
    _apply("agents: [{name: a, model: free, fallback_models: [priced]}]\n")

    assert Agent.objects.filter(name="a").exists()


def test_a_disabled_agent_or_deployment_is_not_in_the_way() -> None:
    _apply(
        "agents: [{name: a, model: free, enabled: false, daily_budget_usd: 1}]\n"
        "budgets: [{scope: global, daily_limit_usd: 10}]\n"
    )
    config_apply(
        document=config_parse(
            BASE.replace("upstream_model: f-1}", "upstream_model: f-1, enabled: false}")
            + "agents: [{name: a, model: free, daily_budget_usd: 1}]\n"
        )
    )

    assert Agent.objects.get(name="a").enabled


def test_a_key_budget_applies_to_the_agents_the_key_may_use() -> None:
    _apply("agents: [{name: a, model: free}, {name: b, model: priced}]\n")
    only_b = api_key_create(name="b-only", scopes=["execute"], agents=["b"]).api_key.prefix
    every = api_key_create(name="all", scopes=["execute"]).api_key.prefix

    _apply(f"budgets: [{{scope: api_key, target: {only_b}, daily_limit_usd: 1}}]\n")
    errors = _errors(
        f"budgets: [{{scope: api_key, target: {every}, daily_limit_usd: 1}}]\n", base=False
    )

    assert errors == [f"budgets[0]: {_problem('a', f'the daily budget of API key {every}')}"]


def test_a_new_budget_over_an_existing_unpriced_agent_is_refused_at_the_budget() -> None:
    _apply("agents: [{name: a, model: free}]\n")

    errors = _errors("budgets: [{scope: global, daily_limit_usd: 10}]\n", base=False)

    assert errors == [f"budgets[0]: {_problem('a', 'the global daily budget')}"]
    assert not Budget.objects.exists()


def test_the_agents_own_entry_is_named_first_then_the_models() -> None:
    errors = _errors(
        "agents: [{name: a, model: free}]\nbudgets: [{scope: global, daily_limit_usd: 10}]\n"
    )
    assert [line.split(": ", 1)[0] for line in errors] == ["agents[0].model"]
    _apply("agents: [{name: a, model: free}]\n")

    errors = _errors("budgets: [{scope: global, daily_limit_usd: 10}]\n")  # with the models

    assert [line.split(": ", 1)[0] for line in errors] == ["models[1]"]


def test_a_model_losing_its_price_under_an_existing_budget_is_refused_at_the_model() -> None:
    _apply("agents: [{name: a, model: priced, daily_budget_usd: 5}]\n")
    deployment = ModelDeployment.objects.get(name="priced")

    errors = _errors("models: [{name: priced, provider: sim, upstream_model: p-1}]\n", base=False)

    assert errors == [
        f"models[0]: {_problem('a', 'its daily budget', deployment.pk).replace('free', 'priced')}"
    ]
    deployment.refresh_from_db()
    assert deployment.input_usd_per_mtok == 1


def test_apply_on_the_command_line_names_the_path(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(BASE + "agents: [{name: a, model: free, daily_budget_usd: 5}]\n")
    err = StringIO()

    with pytest.raises(CommandError):
        call_command("apply", "-f", str(config), stderr=err)

    assert f"{config}: agents[0].model: model 'free' has no price" in err.getvalue()
