"""``config_apply``: idempotent, all or nothing, audited; references checked against doc + DB."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import yaml
from django.db import IntegrityError

from agents.access.services import api_key_create
from agents.config.apply import ApplyResult, ConfigError, config_apply, config_parse
from agents.models import Agent, ModelDeployment, Provider
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.models import AuditEvent

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

TABLES: list[type[Any]] = [Provider, ModelDeployment, Agent, Budget, AuditEvent]
DEMO_ROWS = 6 + 6 + 10 + 10 + 2  # providers, deployments, agents, agent daily budgets, global


def _apply(text: str, **options: Any) -> ApplyResult:
    return config_apply(document=config_parse(text), **options)


def _counts() -> dict[str, int]:
    return {table.__name__: table.objects.count() for table in TABLES}


def _stamps() -> dict[tuple[str, int], Any]:
    """Every config row's ``updated_at``: a save of any row changes this."""
    return {
        (table.__name__, pk): stamp
        for table in (Provider, ModelDeployment, Agent, Budget)
        for pk, stamp in table.objects.values_list("pk", "updated_at")
    }


def _edit(demo_yaml: str, edit: Any) -> str:
    doc = yaml.safe_load(demo_yaml)
    edit(doc)
    return yaml.safe_dump(doc, sort_keys=False)


def _reference_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _apply(text)
    return caught.value.errors


# --- creating and idempotency --------------------------------------------------------------


def test_applying_the_demo_creates_every_entity_and_audits_each(demo_yaml: str) -> None:
    result = _apply(demo_yaml)

    assert _counts() == {
        "Provider": 6,
        "ModelDeployment": 6,
        "Agent": 10,
        "Budget": 12,
        "AuditEvent": DEMO_ROWS,
    }
    assert len(result.created) == DEMO_ROWS
    assert (result.updated, result.deleted, result.unchanged) == ([], [], 0)
    assert result.summary() == f"{DEMO_ROWS} created, 0 updated, 0 deleted, 0 unchanged"
    assert "model gpt-4o-mini (sim-support-b/gpt-4o-mini)" in result.created
    assert "budget agent:customer-support daily" in result.created
    assert "budget global:* monthly" in result.created

    support = Agent.objects.get(name="customer-support")
    assert support.fallback_models == ["claude-3-5-haiku"]
    assert (support.timeout_s, support.max_tokens, support.rate_limit_tpm) == (10, 512, 600_000)
    assert Budget.objects.get(agent=support, window=BudgetWindow.DAILY).limit_usd == Decimal(800)
    assert Budget.objects.get(scope=BudgetScope.GLOBAL, window="monthly").limit_usd == 75_000
    review = Provider.objects.get(name="sim-review")
    assert (review.kind, review.base_url) == ("anthropic", "http://127.0.0.1:18103")
    assert ModelDeployment.objects.filter(name="gpt-4o-mini").count() == 2

    created = AuditEvent.objects.get(action="agent_create", target_id=str(support.pk))
    assert created.actor == "system:apply"
    assert created.after is not None
    assert created.after["max_tokens"] == 512


def test_applying_the_demo_twice_changes_nothing_the_second_time(demo_yaml: str) -> None:
    _apply(demo_yaml)
    counts, stamps = _counts(), _stamps()

    again = _apply(demo_yaml)

    assert (again.created, again.updated, again.deleted) == ([], [], [])
    assert not again.changed
    assert again.unchanged == DEMO_ROWS
    assert _counts() == counts  # in particular no new AuditEvent
    assert _stamps() == stamps  # and no row was saved


def test_a_document_using_every_field_is_idempotent() -> None:
    key = api_key_create(name="ci", scopes=["execute"]).api_key
    text = f"""
providers:
  - {{name: openai-main, kind: openai, api_key_env: OPENAI_API_KEY}}
  - {{name: claude, kind: anthropic, base_url: "https://anthropic.example.com/"}}
  - {{name: sim, kind: simulated, simulation: {{latency_ms: 5, error_rate: 0.5, seed: 7}}}}
models:
  - {{name: big, provider: openai-main, upstream_model: gpt-4o, input_usd_per_mtok: 2.5,
     output_usd_per_mtok: 10.123456, enabled: false}}
  - {{name: small, provider: claude, upstream_model: haiku, input_usd_per_mtok: 0,
     output_usd_per_mtok: 0.000001}}
  - {{name: small, provider: sim, upstream_model: haiku, input_usd_per_mtok: 0.8,
     output_usd_per_mtok: 4}}
agents:
  - name: everything
    description: Uses every field.
    model: big
    fallback_models: [small]
    cheap_model: small
    system_prompt: "Be brief."
    timeout_s: 12.5
    attempt_timeout_s: 4.5
    max_retries: 0
    max_tokens: 100
    breaker: {{failure_threshold: 2, recovery_timeout_s: 0.5, half_open_max_calls: 3}}
    rate_limit: {{rpm: 10, tpm: 2147483647}}
    cache_ttl_s: 60
    daily_budget_usd: 12.345678
    tools:
      - {{name: lookup, kind: python, function: "agents.tools_builtin:calculator", description: Find an order,
         parameters: {{type: object, properties: {{id: {{type: string}}}}, required: [id]}}}}
      - {{name: notify, kind: webhook, url: "https://hooks.example.com/notify", timeout_s: 2}}
    fallback_messages: {{timeout: "Still thinking, try again.", budget: "Out of budget."}}
    queue: heavy.pool-1
    max_concurrency: 16
    enabled: false
budgets:
  - {{scope: global, daily_limit_usd: 0}}
  - {{scope: agent, target: everything, monthly_limit_usd: 300, timezone: Europe/Paris,
     warn_at_pct: 10, alert_at_pct: 20}}
  - {{scope: api_key, target: {key.prefix}, daily_limit_usd: 5, monthly_limit_usd: 50}}
"""
    first = _apply(text)
    assert len(first.created) == 3 + 3 + 1 + 1 + 1 + 1 + 2
    counts, stamps = _counts(), _stamps()

    again = _apply(text)

    assert (again.created, again.updated, again.deleted) == ([], [], [])
    assert (_counts(), _stamps()) == (counts, stamps)
    agent = Agent.objects.get(name="everything")
    assert agent.tools[0]["parameters"]["required"] == ["id"]
    assert agent.tools[1]["max_response_bytes"] == 65_536
    assert agent.rate_limit_tpm == 2_147_483_647
    assert agent.attempt_timeout_s == 4.5
    assert agent.queue == "heavy.pool-1"
    assert agent.max_concurrency == 16
    assert Provider.objects.get(name="claude").base_url == "https://anthropic.example.com"
    assert Provider.objects.get(name="openai-main").base_url == "https://api.openai.com/v1"
    assert Budget.objects.get(agent=agent, window="daily").limit_usd == Decimal("12.345678")
    assert Budget.objects.get(api_key=key, window="monthly").limit_usd == 50


def test_the_largest_values_the_schema_accepts_fit_the_database(demo_yaml: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["providers"][0] = {
            "name": "sim-support",
            "kind": "simulated",
            "simulation": {"seed": 2**63 - 1},
        }
        doc["models"][0]["input_usd_per_mtok"] = 100_000  # PRICE_MAX
        doc["agents"][0].update(
            timeout_s=3600, attempt_timeout_s=3600, daily_budget_usd=99_999_999.999999
        )
        doc["agents"][0]["rate_limit"] = {"rpm": 10_000_000, "tpm": 2_147_483_647}
        doc["budgets"][0]["monthly_limit_usd"] = 99_999_999.999999

    _apply(_edit(demo_yaml, edit))

    support = Agent.objects.get(name="customer-support")
    assert support.rate_limit_tpm == 2_147_483_647
    assert support.attempt_timeout_s == 3600
    assert Budget.objects.get(agent=support).limit_usd == Decimal("99999999.999999")
    monthly = Budget.objects.get(scope=BudgetScope.GLOBAL, window=BudgetWindow.MONTHLY)
    assert monthly.limit_usd == Decimal("99999999.999999")
    deployment = ModelDeployment.objects.get(provider__name="sim-support")
    assert deployment.input_usd_per_mtok == Decimal(100_000)


# --- atomicity -----------------------------------------------------------------------------


def test_a_reference_error_in_the_last_agent_applies_nothing(demo_yaml: str) -> None:
    text = _edit(demo_yaml, lambda doc: doc["agents"][-1].update(model="gpt-5"))

    assert _reference_errors(text) == ["agents[9].model: unknown model 'gpt-5'"]
    assert _counts() == dict.fromkeys(_counts(), 0)


def test_a_database_failure_at_the_last_entry_rolls_back_every_earlier_write(
    demo_yaml: str,
) -> None:
    document = config_parse(demo_yaml)
    # A spec the schema would refuse, built without validation, so the failure comes from the
    # database's CHECK constraint after everything before it has been written.
    broken = document.agents[-1].model_copy(update={"timeout_s": 7200.0})
    document = document.model_copy(update={"agents": [*document.agents[:-1], broken]})

    with pytest.raises(IntegrityError):
        config_apply(document=document)

    assert _counts() == dict.fromkeys(_counts(), 0)


def test_an_update_next_to_an_error_leaves_the_existing_agent_unchanged(demo_yaml: str) -> None:
    _apply(demo_yaml)
    counts, stamps = _counts(), _stamps()

    def edit(doc: dict[str, Any]) -> None:
        doc["agents"][0]["max_tokens"] = 999
        doc["agents"][0]["daily_budget_usd"] = 1
        doc["agents"][-1]["fallback_models"] = ["gpt-9"]

    assert _reference_errors(_edit(demo_yaml, edit)) == [
        "agents[9].fallback_models[0]: unknown model 'gpt-9'"
    ]
    assert Agent.objects.get(name="customer-support").max_tokens == 512
    assert (_counts(), _stamps()) == (counts, stamps)


def test_an_update_next_to_a_database_failure_leaves_the_existing_agent_unchanged(
    demo_yaml: str,
) -> None:
    _apply(demo_yaml)
    counts, stamps = _counts(), _stamps()
    document = config_parse(demo_yaml)
    changed = document.agents[0].model_copy(update={"max_tokens": 999, "system_prompt": "New."})
    broken = document.agents[-1].model_copy(update={"max_retries": 99})
    document = document.model_copy(update={"agents": [changed, *document.agents[1:-1], broken]})

    with pytest.raises(IntegrityError):
        config_apply(document=document)

    support = Agent.objects.get(name="customer-support")
    assert (support.max_tokens, support.system_prompt[:10]) == (512, "You are a ")
    assert (_counts(), _stamps()) == (counts, stamps)


# --- reference errors ----------------------------------------------------------------------


REFERENCE_ERRORS: list[tuple[str, Any, list[str]]] = [
    ("unknown model", lambda d: d["agents"][4].update(model="gpt-5"),
     ["agents[4].model: unknown model 'gpt-5'"]),
    ("unknown fallback", lambda d: d["agents"][1].update(fallback_models=["gpt-4o", "x"]),
     ["agents[1].fallback_models[1]: unknown model 'x'"]),
    ("unknown cheap model", lambda d: d["agents"][2].update(cheap_model="tiny"),
     ["agents[2].cheap_model: unknown model 'tiny'"]),
    ("duplicate agent", lambda d: d["agents"].append(dict(d["agents"][3])),
     ["agents[10]: duplicate of agents[3]"]),
    ("duplicate provider", lambda d: d["providers"].append({"name": "sim-review", "kind": "simulated"}),
     ["providers[6]: duplicate of providers[2]"]),
    ("duplicate deployment", lambda d: d["models"].append(dict(d["models"][1], weight=5)),
     ["models[6]: duplicate of models[1]"]),
    ("python tool off the allow-list",
     lambda d: d["agents"][0].update(tools=[{"name": "shell", "kind": "python", "function": "os:system"}]),
     ["agents[0].tools[0].function: 'os:system' is not in BREAKWATER_TOOL_ALLOW_LIST"]),
    ("unknown provider", lambda d: d["models"][5].update(provider="nope"),
     ["models[5].provider: unknown provider 'nope'"]),
    ("agent budget for an unknown agent",
     lambda d: d["budgets"].append({"scope": "agent", "target": "ghost", "monthly_limit_usd": 5}),
     ["budgets[1].target: unknown agent 'ghost'"]),
    ("agent daily budget in the budgets section",
     lambda d: d["budgets"].append({"scope": "agent", "target": "hr-policy", "daily_limit_usd": 5}),
     ["budgets[1].daily_limit_usd: an agent's daily budget is set by daily_budget_usd in agents[6]"]),
    ("agent daily budget in budgets, agent without one",
     lambda d: (d["agents"][6].pop("daily_budget_usd"), d["budgets"].append(
         {"scope": "agent", "target": "hr-policy", "daily_limit_usd": 5})),
     ["budgets[1].daily_limit_usd: an agent's daily budget is set by daily_budget_usd in "
      "the agent's entry"]),
    ("unknown API key",
     lambda d: d["budgets"].append({"scope": "api_key", "target": "bw_nope", "daily_limit_usd": 5}),
     ["budgets[1].target: unknown API key prefix 'bw_nope'"]),
    ("two budgets for one window",
     lambda d: d["budgets"].append({"scope": "global", "daily_limit_usd": 5}),
     ["budgets[1]: duplicate of budgets[0] (daily window)"]),
    ("two budgets for one window of one agent",
     lambda d: d["budgets"].extend([
         {"scope": "agent", "target": "translator", "monthly_limit_usd": 5},
         {"scope": "global", "monthly_limit_usd": 9},
         {"scope": "agent", "target": "translator", "monthly_limit_usd": 7},
     ]),
     ["budgets[2]: duplicate of budgets[0] (monthly window)",
      "budgets[3]: duplicate of budgets[1] (monthly window)"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [case[1:] for case in REFERENCE_ERRORS],
    ids=[case[0] for case in REFERENCE_ERRORS],
)
def test_each_reference_error_is_reported_with_its_path(
    demo_yaml: str, edit: Any, expected: list[str]
) -> None:
    assert _reference_errors(_edit(demo_yaml, edit)) == expected
    assert _counts() == dict.fromkeys(_counts(), 0)


def test_every_reference_error_in_a_document_is_reported(demo_yaml: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["models"][0]["provider"] = "nope"
        doc["agents"][0]["model"] = "gpt-5"
        doc["agents"][0]["fallback_models"] = ["a", "claude-3-5-haiku", "b"]
        doc["agents"].append(dict(doc["agents"][1]))
        doc["budgets"].append({"scope": "agent", "target": "ghost", "monthly_limit_usd": 1})

    assert _reference_errors(_edit(demo_yaml, edit)) == [
        "agents[10]: duplicate of agents[1]",
        "models[0].provider: unknown provider 'nope'",
        "agents[0].model: unknown model 'gpt-5'",
        "agents[0].fallback_models[0]: unknown model 'a'",
        "agents[0].fallback_models[2]: unknown model 'b'",
        "budgets[1].target: unknown agent 'ghost'",
    ]


def test_references_resolve_against_what_the_database_already_has(demo_yaml: str) -> None:
    _apply(demo_yaml)

    result = _apply(
        "models: [{name: gpt-4o, provider: sim-general, upstream_model: gpt-4o-2,"
        " input_usd_per_mtok: 1, output_usd_per_mtok: 2}]\n"
        "agents: [{name: newcomer, model: gpt-4o, fallback_models: [claude-3-5-haiku]}]\n"
        "budgets: [{scope: agent, target: translator, monthly_limit_usd: 100}]\n"
    )

    assert result.created == [
        "model gpt-4o (sim-general/gpt-4o-2)",
        "agent newcomer",
        "budget agent:translator monthly",
    ]
    assert result.deleted == []


def test_with_prune_a_reference_to_something_the_file_omits_is_an_error(demo_yaml: str) -> None:
    _apply(demo_yaml)

    with pytest.raises(ConfigError) as caught:
        _apply("agents: [{name: newcomer, model: gpt-4o}]", prune=True)

    assert caught.value.errors == ["agents[0].model: unknown model 'gpt-4o'"]
    assert Agent.objects.count() == 10


# --- prune and dry run ---------------------------------------------------------------------


def test_without_prune_what_the_file_omits_is_kept(demo_yaml: str) -> None:
    _apply(demo_yaml)
    counts = _counts()

    result = _apply("agents: [{name: customer-support, model: gpt-4o-mini}]")

    assert result.deleted == ["budget agent:customer-support daily"]
    assert result.updated == ["agent customer-support"]
    assert _counts() == counts | {"Budget": 11, "AuditEvent": counts["AuditEvent"] + 2}


def test_prune_deletes_what_the_file_omits_and_audits_each_deletion(demo_yaml: str) -> None:
    extra = """
providers: [{name: sim-extra, kind: simulated}]
models: [{name: extra, provider: sim-extra, upstream_model: x, input_usd_per_mtok: 1,
          output_usd_per_mtok: 1}]
"""
    _apply(demo_yaml)
    _apply(extra)
    notes = Agent.objects.get(name="release-notes")
    extra_provider = Provider.objects.get(name="sim-extra")

    def edit(doc: dict[str, Any]) -> None:
        doc["agents"] = [a for a in doc["agents"] if a["name"] != "release-notes"]
        doc["budgets"][0].pop("monthly_limit_usd")

    result = _apply(_edit(demo_yaml, edit), prune=True)

    assert (result.created, result.updated) == ([], [])
    assert result.deleted == [
        "budget agent:release-notes daily",
        "budget global:* monthly",
        "agent release-notes",
        "model extra",
        "provider sim-extra",
    ]
    assert not Agent.objects.filter(name="release-notes").exists()
    assert not Provider.objects.filter(name="sim-extra").exists()
    assert not Budget.objects.filter(window=BudgetWindow.MONTHLY).exists()
    assert _counts() | {"AuditEvent": 0} == {
        "Provider": 6,
        "ModelDeployment": 6,
        "Agent": 9,
        "Budget": 10,
        "AuditEvent": 0,
    }
    deletions = set(
        AuditEvent.objects.filter(action__endswith="_delete").values_list("action", "target_id")
    )
    assert {
        ("agent_delete", str(notes.pk)),
        ("provider_delete", str(extra_provider.pk)),
    } <= deletions
    assert len(deletions) == 5

    again = _apply(_edit(demo_yaml, edit), prune=True)
    assert not again.changed


def test_prune_with_an_empty_document_empties_the_config(demo_yaml: str) -> None:
    _apply(demo_yaml)

    result = _apply("", prune=True)

    assert len(result.deleted) == DEMO_ROWS
    assert _counts() | {"AuditEvent": 0} == dict.fromkeys(_counts(), 0)
    assert AuditEvent.objects.filter(action__endswith="_delete").count() == DEMO_ROWS


def test_a_dry_run_reports_the_plan_and_writes_nothing(demo_yaml: str) -> None:
    plan = _apply(demo_yaml, dry_run=True)

    assert len(plan.created) == DEMO_ROWS
    assert "agent customer-support" in plan.created
    assert _counts() == dict.fromkeys(_counts(), 0)


def test_a_dry_run_of_changes_and_deletions_writes_nothing(demo_yaml: str) -> None:
    _apply(demo_yaml)
    counts, stamps = _counts(), _stamps()

    def edit(doc: dict[str, Any]) -> None:
        doc["agents"][0]["max_tokens"] = 700
        del doc["agents"][-1]

    plan = _apply(_edit(demo_yaml, edit), prune=True, dry_run=True)

    assert plan.updated == ["agent customer-support"]
    assert plan.deleted == ["budget agent:release-notes daily", "agent release-notes"]
    assert (_counts(), _stamps()) == (counts, stamps)
    assert Agent.objects.get(name="customer-support").max_tokens == 512


# --- updates -------------------------------------------------------------------------------


def test_changing_one_field_updates_only_that_agent_and_audits_only_that_field(
    demo_yaml: str,
) -> None:
    _apply(demo_yaml)
    support = Agent.objects.get(name="customer-support")
    counts, stamps = _counts(), _stamps()

    result = _apply(_edit(demo_yaml, lambda doc: doc["agents"][0].update(max_tokens=600)))

    assert (result.created, result.updated, result.deleted) == ([], ["agent customer-support"], [])
    assert result.unchanged == DEMO_ROWS - 1
    changed = {key for key, stamp in _stamps().items() if stamps[key] != stamp}
    assert changed == {("Agent", support.pk)}
    assert _counts() == counts | {"AuditEvent": counts["AuditEvent"] + 1}
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None
    assert (event.action, event.target_type, event.target_id, event.actor) == (
        "agent_update",
        "agent",
        str(support.pk),
        "system:apply",
    )
    assert (event.before, event.after) == ({"max_tokens": 512}, {"max_tokens": 600})


def test_removing_attempt_timeout_s_restores_the_derived_default_and_is_audited(
    demo_yaml: str,
) -> None:
    _apply(demo_yaml)
    support = Agent.objects.get(name="customer-support")
    assert support.attempt_timeout_s == 4

    _apply(_edit(demo_yaml, lambda doc: doc["agents"][0].pop("attempt_timeout_s")))

    support.refresh_from_db()
    assert support.attempt_timeout_s is None
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None
    assert (event.before, event.after) == ({"attempt_timeout_s": 4.0}, {"attempt_timeout_s": None})


def test_moving_an_agent_to_another_queue_is_audited_and_leaving_it_out_restores_default(
    demo_yaml: str,
) -> None:
    _apply(demo_yaml)
    assert Agent.objects.get(name="customer-support").queue == "default"

    _apply(_edit(demo_yaml, lambda doc: doc["agents"][0].update(queue="support-pool")))

    assert Agent.objects.get(name="customer-support").queue == "support-pool"
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None
    assert (event.before, event.after) == ({"queue": "default"}, {"queue": "support-pool"})
    _apply(demo_yaml)
    assert Agent.objects.get(name="customer-support").queue == "default"


def test_changing_a_nested_and_a_list_field_audits_both(demo_yaml: str) -> None:
    _apply(demo_yaml)

    def edit(doc: dict[str, Any]) -> None:
        doc["agents"][1]["breaker"]["failure_threshold"] = 9
        doc["agents"][1]["fallback_models"] = ["gpt-4o", "claude-3-5-haiku"]

    _apply(_edit(demo_yaml, edit), actor="user:alice")

    event = AuditEvent.objects.get(action="agent_update")
    assert event.actor == "user:alice"
    assert event.before == {"fallback_models": ["gpt-4o"], "breaker_failure_threshold": 5}
    assert event.after == {
        "fallback_models": ["gpt-4o", "claude-3-5-haiku"],
        "breaker_failure_threshold": 9,
    }


def test_changing_a_price_updates_that_deployment_only(demo_yaml: str) -> None:
    _apply(demo_yaml)

    result = _apply(_edit(demo_yaml, lambda doc: doc["models"][1].update(input_usd_per_mtok=0.2)))

    assert result.updated == ["model gpt-4o-mini (sim-support-b/gpt-4o-mini)"]
    prices = dict(
        ModelDeployment.objects.filter(name="gpt-4o-mini").values_list(
            "provider__name", "input_usd_per_mtok"
        )
    )
    assert prices == {"sim-support": Decimal("0.15"), "sim-support-b": Decimal("0.2")}
    event = AuditEvent.objects.get(action="modeldeployment_update")
    assert (event.before, event.after) == (
        {"input_usd_per_mtok": "0.150000"},
        {"input_usd_per_mtok": "0.2"},
    )


def test_changing_daily_budget_usd_updates_the_agent_budget(demo_yaml: str) -> None:
    _apply(demo_yaml)

    result = _apply(_edit(demo_yaml, lambda doc: doc["agents"][0].update(daily_budget_usd=850)))

    assert result.updated == ["budget agent:customer-support daily"]
    budget = Budget.objects.get(agent__name="customer-support", window=BudgetWindow.DAILY)
    assert budget.limit_usd == 850


def test_removing_daily_budget_usd_deletes_the_agents_daily_budget(demo_yaml: str) -> None:
    _apply(demo_yaml)
    budget = Budget.objects.get(agent__name="customer-support", window=BudgetWindow.DAILY)

    result = _apply(_edit(demo_yaml, lambda doc: doc["agents"][0].pop("daily_budget_usd")))

    assert (result.created, result.updated) == ([], [])
    assert result.deleted == ["budget agent:customer-support daily"]
    assert not Budget.objects.filter(pk=budget.pk).exists()
    assert Budget.objects.filter(scope=BudgetScope.AGENT).count() == 9
    event = AuditEvent.objects.get(action="budget_delete")
    assert event.target_id == str(budget.pk)

    assert not _apply(
        _edit(demo_yaml, lambda doc: doc["agents"][0].pop("daily_budget_usd"))
    ).changed
