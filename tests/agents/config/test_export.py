"""``config_export``: the database in the format ``apply`` reads; ``export | apply`` is a no-op."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet
from pytest_django.fixtures import Settings

from agents.access.crypto import decrypt_secret
from agents.access.services import api_key_create, provider_secret_set
from agents.config.apply import ApplyResult, config_apply, config_parse
from agents.config.export import config_export, config_export_yaml
from agents.models import Agent, ModelDeployment, Provider
from budgets.models import Budget
from core.models import AuditEvent

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]

SECRET = "sk-live-4f9c2b7e0d1a8b3c6e5f"


def _apply(text: str, **options: Any) -> ApplyResult:
    return config_apply(document=config_parse(text), **options)


def _snapshot() -> dict[str, Any]:
    """Every config row with its ``updated_at``, plus the audit count."""
    return {
        table.__name__: sorted(table.objects.values_list("pk", "updated_at"))
        for table in (Provider, ModelDeployment, Agent, Budget)
    } | {"audit": AuditEvent.objects.count()}


def test_exporting_an_empty_database_gives_an_empty_document() -> None:
    assert config_export_yaml() == (
        "providers: []\nmodels: []\nagents: []\nbudgets: []\nnotifications: []\n"
    )
    assert config_parse(config_export_yaml()) == config_parse("")


def test_export_then_apply_of_the_demo_changes_nothing(demo_yaml: str) -> None:
    _apply(demo_yaml)
    before = _snapshot()

    result = _apply(config_export_yaml())

    assert (result.created, result.updated, result.deleted) == ([], [], [])
    assert result.unchanged == 34
    assert _snapshot() == before


def test_export_then_apply_with_prune_changes_nothing(demo_yaml: str) -> None:
    _apply(demo_yaml)
    before = _snapshot()

    assert not _apply(config_export_yaml(), prune=True).changed
    assert _snapshot() == before


def test_exporting_twice_gives_identical_text(demo_yaml: str) -> None:
    _apply(demo_yaml)

    first = config_export_yaml()
    _apply(first)

    assert config_export_yaml() == first


def test_the_export_describes_the_same_config_as_the_demo_file(demo_yaml: str) -> None:
    _apply(demo_yaml)

    source, exported = config_parse(demo_yaml), config_parse(config_export_yaml())

    assert {p.name: p for p in exported.providers} == {p.name: p for p in source.providers}
    assert {(m.name, m.provider): m for m in exported.models} == {
        (m.name, m.provider): m for m in source.models
    }
    assert {a.name: a for a in exported.agents} == {a.name: a for a in source.agents}
    assert exported.budgets == source.budgets


def test_the_export_is_ordered_and_readable(demo_yaml: str) -> None:
    _apply(demo_yaml)

    data = yaml.safe_load(config_export_yaml())

    assert [p["name"] for p in data["providers"]] == sorted(p["name"] for p in data["providers"])
    assert [a["name"] for a in data["agents"]] == sorted(a["name"] for a in data["agents"])
    support = next(a for a in data["agents"] if a["name"] == "customer-support")
    assert support["daily_budget_usd"] == 800
    assert support["rate_limit"] == {"rpm": 1200, "tpm": 600000}
    assert "cheap_model" not in support
    assert support["attempt_timeout_s"] == 4
    review = next(a for a in data["agents"] if a["name"] == "code-review")
    assert "attempt_timeout_s" not in review  # unset: derived, so left out
    assert (support["queue"], review["queue"]) == ("default", "default")  # shown even when default
    analyst = next(a for a in data["agents"] if a["name"] == "data-analyst")
    assert analyst["queue"] == "heavy"
    assert "max_concurrency" not in review  # unset: no cap, so left out
    assert analyst["max_concurrency"] == 24
    assert data["budgets"] == [
        {
            "scope": "global",
            "daily_limit_usd": 3000,
            "timezone": "UTC",
            "warn_at_pct": 50,
            "alert_at_pct": 80,
            "monthly_limit_usd": 75000,
        }
    ]
    model = next(m for m in data["models"] if m["provider"] == "sim-support")
    assert (model["input_usd_per_mtok"], model["output_usd_per_mtok"]) == (0.15, 0.6)


def test_budgets_for_agents_and_api_keys_round_trip() -> None:
    key = api_key_create(name="ci", scopes=["execute"]).api_key
    _apply(
        f"""
providers: [{{name: sim, kind: simulated}}]
models: [{{name: m, provider: sim, upstream_model: u, input_usd_per_mtok: 1.234567,
           output_usd_per_mtok: 2}}]
agents: [{{name: a, model: m, daily_budget_usd: 0.5}}, {{name: b, model: m}}]
budgets:
  - {{scope: agent, target: a, monthly_limit_usd: 9, timezone: Asia/Tokyo}}
  - {{scope: api_key, target: {key.prefix}, daily_limit_usd: 1, monthly_limit_usd: 20,
     warn_at_pct: 70, alert_at_pct: 90}}
  - {{scope: global, daily_limit_usd: 10, warn_at_pct: 60}}
  - {{scope: global, monthly_limit_usd: 100}}
"""
    )
    before = _snapshot()
    text = config_export_yaml()

    assert not _apply(text, prune=True).changed
    assert _snapshot() == before
    exported = yaml.safe_load(text)
    assert {"scope": "api_key", "target": key.prefix} | {
        "daily_limit_usd": 1,
        "monthly_limit_usd": 20,
        "timezone": "UTC",
        "warn_at_pct": 70,
        "alert_at_pct": 90,
    } in exported["budgets"]
    assert exported["agents"][0]["daily_budget_usd"] == 0.5
    assert "daily_budget_usd" not in exported["agents"][1]
    assert exported["models"][0]["input_usd_per_mtok"] == 1.234567


@pytest.fixture
def encryption_key(settings: Settings) -> str:
    key = Fernet.generate_key().decode()
    settings.BREAKWATER_ENCRYPTION_KEYS = [key]
    return key


def _provider_with_stored_secret() -> Provider:
    _apply(
        "providers: [{name: openai-main, kind: openai, api_key_env: OPENAI_API_KEY}]\n"
        "models: [{name: m, provider: openai-main, upstream_model: gpt-4o-mini,"
        " input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.6}]\n"
    )
    return provider_secret_set(provider_name="openai-main", secret=SECRET)


def test_export_never_contains_a_stored_secret_or_its_ciphertext(encryption_key: str) -> None:
    provider = _provider_with_stored_secret()
    assert provider.api_key_encrypted

    text = config_export_yaml()

    assert SECRET not in text
    assert provider.api_key_encrypted not in text
    assert provider.api_key_encrypted[:16] not in text
    assert config_export()["providers"] == [
        {"name": "openai-main", "kind": "openai", "base_url": "https://api.openai.com/v1"}
    ]


def test_applying_the_export_keeps_the_stored_secret(encryption_key: str) -> None:
    provider = _provider_with_stored_secret()
    before = _snapshot()

    result = _apply(config_export_yaml())

    assert not result.changed
    assert _snapshot() == before
    stored = Provider.objects.get(pk=provider.pk)
    assert stored.api_key_encrypted == provider.api_key_encrypted
    assert decrypt_secret(stored.api_key_encrypted) == SECRET


def test_naming_an_env_var_replaces_a_stored_secret_without_auditing_it(
    encryption_key: str,
) -> None:
    provider = _provider_with_stored_secret()

    result = _apply("providers: [{name: openai-main, kind: openai, api_key_env: NEW_KEY}]")

    assert result.updated == ["provider openai-main"]
    stored = Provider.objects.get(pk=provider.pk)
    assert (stored.api_key_env, stored.api_key_encrypted) == ("NEW_KEY", "")
    event = AuditEvent.objects.get(action="provider_update")
    assert (event.before, event.after) == ({"api_key_env": ""}, {"api_key_env": "NEW_KEY"})
    for row in AuditEvent.objects.values_list("before", "after"):
        assert provider.api_key_encrypted not in str(row)
        assert SECRET not in str(row)


def test_awkward_strings_survive_the_round_trip() -> None:
    prompt = 'Line one: "quoted".\n\n  - not a list\n# not a comment\nÜnïcødé ✓ 中文'
    _apply(
        "providers: [{name: sim, kind: simulated}]\n"
        "models: [{name: 'yes', provider: sim, upstream_model: 'null', input_usd_per_mtok: 0,"
        " output_usd_per_mtok: 0}]\n"
    )
    _apply(
        "agents: [{name: quirky, model: 'yes', description: '123',"
        " fallback_messages: {timeout: 'true'}}]"
    )
    Agent.objects.filter(name="quirky").update(system_prompt=prompt)
    before = _snapshot()

    text = config_export_yaml()

    assert not _apply(text).changed
    assert _snapshot() == before
    agent = config_parse(text).agents[0]
    assert (agent.model, agent.description, agent.system_prompt) == ("yes", "123", prompt)
    assert agent.fallback_messages == {"timeout": "true"}
    assert config_parse(text).models[0].upstream_model == "null"
