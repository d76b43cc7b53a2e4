"""The database refuses bad agents, providers, deployments, keys and executions.

Every write here goes through the ORM's ``create``/``update``, which skip model validation, so
only the database's CHECK and UNIQUE constraints stand between the row and the table.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from agents.access.keys import generate_key
from agents.models import Agent, ApiKey, Execution, ModelDeployment, Provider

pytestmark = [pytest.mark.dbmatrix, pytest.mark.django_db]


def _refused(model: type[Any], /, **fields: Any) -> None:
    before = model.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        model.objects.create(**fields)
    assert model.objects.count() == before


def _agent(**overrides: Any) -> dict[str, Any]:
    return {"name": "support", "model": "gpt-4o-mini", **overrides}


def _provider(**overrides: Any) -> dict[str, Any]:
    return {"name": "openai-main", "kind": "openai", "base_url": "https://api.example/v1"} | (
        overrides
    )


@pytest.fixture
def provider() -> Provider:
    return Provider.objects.create(name="sim", kind="simulated")


def _deployment(provider: Provider, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "gpt-4o-mini",
        "provider": provider,
        "upstream_model": "gpt-4o-mini",
        "input_usd_per_mtok": Decimal("0.15"),
        "output_usd_per_mtok": Decimal("0.60"),
        **overrides,
    }


# --- Agent ---------------------------------------------------------------------------------


def test_a_valid_agent_is_stored() -> None:
    agent = Agent.objects.create(**_agent(cheap_model="gpt-4o-nano", timeout_s=3600))
    assert Agent.objects.get(pk=agent.pk).timeout_s == 3600


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"timeout_s": 0}, id="timeout-zero"),
        pytest.param({"timeout_s": -1.5}, id="timeout-negative"),
        pytest.param({"timeout_s": math.nan}, id="timeout-nan"),
        pytest.param({"timeout_s": math.inf}, id="timeout-inf"),
        pytest.param({"timeout_s": 3600.5}, id="timeout-over-an-hour"),
        pytest.param({"max_retries": 11}, id="retries-11"),
        pytest.param({"max_tokens": 0}, id="max-tokens-zero"),
        pytest.param({"breaker_failure_threshold": 0}, id="breaker-threshold-zero"),
        pytest.param({"breaker_recovery_timeout_s": math.inf}, id="breaker-recovery-inf"),
        pytest.param({"breaker_half_open_max_calls": 0}, id="half-open-zero"),
        pytest.param({"rate_limit_rpm": 0}, id="rpm-zero"),
        pytest.param({"cache_ttl_s": 31 * 86400}, id="cache-ttl-over-30-days"),
        pytest.param({"cheap_model": "gpt-4o-mini"}, id="cheap-model-equals-model"),
        pytest.param({"model": ""}, id="no-model"),
        pytest.param({"name": "Customer Support"}, id="name-not-a-slug"),
        pytest.param({"name": "-support"}, id="name-leading-dash"),
        pytest.param({"name": ""}, id="name-empty"),
    ],
)
def test_the_database_refuses_a_bad_agent(fields: dict[str, Any]) -> None:
    _refused(Agent, **_agent(**fields))


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"timeout_s": 0}, id="timeout-zero"),
        pytest.param({"timeout_s": math.nan}, id="timeout-nan"),
        pytest.param({"max_retries": 11}, id="retries-11"),
        pytest.param({"breaker_failure_threshold": 0}, id="breaker-threshold-zero"),
        pytest.param({"cheap_model": "gpt-4o-mini"}, id="cheap-model-equals-model"),
    ],
)
def test_the_database_refuses_a_bad_agent_update(fields: dict[str, Any]) -> None:
    agent = Agent.objects.create(**_agent())
    with pytest.raises(IntegrityError), transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(**fields)
    agent.refresh_from_db()
    assert agent.timeout_s == 30.0
    assert agent.cheap_model == ""


def test_two_agents_cannot_share_a_name() -> None:
    Agent.objects.create(**_agent())
    _refused(Agent, **_agent(model="other"))


# --- Provider ------------------------------------------------------------------------------


def test_valid_providers_are_stored() -> None:
    Provider.objects.create(**_provider(api_key_env="OPENAI_API_KEY"))
    Provider.objects.create(name="sim", kind="simulated")
    Provider.objects.create(**_provider(name="stored", api_key_encrypted="gAAAA-token"))
    assert Provider.objects.count() == 3


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"base_url": ""}, id="openai-without-base-url"),
        pytest.param({"kind": "anthropic", "base_url": ""}, id="anthropic-without-base-url"),
        pytest.param(
            {"api_key_env": "OPENAI_API_KEY", "api_key_encrypted": "gAAAA-token"},
            id="env-and-stored-secret",
        ),
        pytest.param({"api_key_env": "openai-key"}, id="env-name-lowercase"),
        pytest.param({"api_key_env": "1KEY"}, id="env-name-leading-digit"),
        pytest.param({"kind": "azure"}, id="unknown-kind"),
        pytest.param({"name": "OpenAI Main"}, id="name-not-a-slug"),
    ],
)
def test_the_database_refuses_a_bad_provider(fields: dict[str, Any]) -> None:
    _refused(Provider, **_provider(**fields))


def test_setting_an_env_name_on_a_provider_with_a_stored_secret_is_refused() -> None:
    provider = Provider.objects.create(**_provider(api_key_encrypted="gAAAA-token"))
    with pytest.raises(IntegrityError), transaction.atomic():
        Provider.objects.filter(pk=provider.pk).update(api_key_env="OPENAI_API_KEY")


# --- ModelDeployment -----------------------------------------------------------------------


def test_a_valid_deployment_is_stored(provider: Provider) -> None:
    ModelDeployment.objects.create(**_deployment(provider, input_usd_per_mtok=Decimal(0)))
    assert ModelDeployment.objects.count() == 1


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"input_usd_per_mtok": Decimal("-0.01")}, id="negative-input-price"),
        pytest.param({"output_usd_per_mtok": Decimal("-1")}, id="negative-output-price"),
        pytest.param({"output_usd_per_mtok": Decimal("100001")}, id="absurd-price"),
        pytest.param({"weight": 0}, id="weight-zero"),
        pytest.param({"weight": 1001}, id="weight-over-1000"),
        pytest.param({"max_concurrency": 0}, id="concurrency-zero"),
        pytest.param({"upstream_model": ""}, id="no-upstream-model"),
        pytest.param({"name": "bad name"}, id="name-with-space"),
    ],
)
def test_the_database_refuses_a_bad_deployment(provider: Provider, fields: dict[str, Any]) -> None:
    _refused(ModelDeployment, **_deployment(provider, **fields))


def test_a_nan_price_is_refused_by_django_before_the_database(provider: Provider) -> None:
    # Decimal('NaN') never reaches SQL: DecimalField's conversion raises ValidationError first
    # (the CHECK constraint would refuse it on PostgreSQL; SQLite has no decimal NaN).
    with pytest.raises(ValidationError, match="must be a decimal number"), transaction.atomic():
        ModelDeployment.objects.create(**_deployment(provider, input_usd_per_mtok=Decimal("NaN")))
    assert not ModelDeployment.objects.exists()


def test_a_nan_price_update_is_refused_too(provider: Provider) -> None:
    deployment = ModelDeployment.objects.create(**_deployment(provider))
    with pytest.raises(ValidationError), transaction.atomic():
        ModelDeployment.objects.filter(pk=deployment.pk).update(output_usd_per_mtok=Decimal("NaN"))
    deployment.refresh_from_db()
    assert deployment.output_usd_per_mtok == Decimal("0.6")


def test_the_same_deployment_cannot_be_declared_twice(provider: Provider) -> None:
    ModelDeployment.objects.create(**_deployment(provider))
    _refused(ModelDeployment, **_deployment(provider, weight=2))
    # Another upstream model under the same logical name is a second deployment, and fine.
    ModelDeployment.objects.create(**_deployment(provider, upstream_model="gpt-4o-mini-2024"))
    assert ModelDeployment.objects.filter(name="gpt-4o-mini").count() == 2


def test_a_provider_with_deployments_cannot_be_deleted(provider: Provider) -> None:
    from django.db.models import ProtectedError

    ModelDeployment.objects.create(**_deployment(provider))
    with pytest.raises(ProtectedError):
        provider.delete()


# --- ApiKey --------------------------------------------------------------------------------


def _key_fields(**overrides: Any) -> dict[str, Any]:
    new = generate_key()
    return {
        "name": "ci",
        "prefix": new.prefix,
        "secret_hash": new.secret_hash,
        "scopes": "read,execute",
        **overrides,
    }


def test_a_valid_api_key_is_stored() -> None:
    ApiKey.objects.create(**_key_fields(scopes="read,execute,operate,admin"))
    assert ApiKey.objects.count() == 1


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"scopes": "read,root"}, id="unknown-scope"),
        pytest.param({"scopes": ""}, id="no-scopes"),
        pytest.param({"scopes": "read, execute"}, id="space-in-scopes"),
        pytest.param({"scopes": "read,"}, id="trailing-comma"),
        pytest.param({"secret_hash": "xyz"}, id="hash-not-hex"),
        pytest.param({"secret_hash": "A" * 64}, id="hash-uppercase"),
        pytest.param({"secret_hash": "a" * 63}, id="hash-too-short"),
        pytest.param({"prefix": "sk_12345678"}, id="prefix-not-bw"),
        pytest.param({"name": ""}, id="no-name"),
    ],
)
def test_the_database_refuses_a_bad_api_key(fields: dict[str, Any]) -> None:
    _refused(ApiKey, **_key_fields(**fields))


def test_two_keys_cannot_share_a_prefix() -> None:
    first = ApiKey.objects.create(**_key_fields())
    _refused(ApiKey, **_key_fields(prefix=first.prefix))


# --- Execution -----------------------------------------------------------------------------


def test_a_valid_degraded_execution_is_stored() -> None:
    Execution.objects.create(
        agent_name="support", status="degraded", fallback_used=True, fallback_reason="timeout"
    )
    assert Execution.objects.count() == 1


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "bogus"}, id="unknown-status"),
        pytest.param({"status": ""}, id="empty-status"),
        pytest.param({"status": "degraded", "fallback_used": True}, id="fallback-no-reason"),
        pytest.param({"fallback_reason": "cosmic_rays"}, id="unknown-fallback-reason"),
        pytest.param({"cost_usd": Decimal("-0.000001")}, id="negative-cost"),
    ],
)
def test_the_database_refuses_a_bad_execution(fields: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        Execution.objects.create(**({"agent_name": "support", "status": "succeeded"} | fields))
    assert not Execution.objects.exists()


def test_an_execution_update_to_a_bad_status_is_refused() -> None:
    execution = Execution.objects.create(agent_name="support", status="running")
    with pytest.raises(IntegrityError), transaction.atomic():
        Execution.objects.filter(pk=execution.pk).update(status="exploded")
    execution.refresh_from_db()
    assert execution.status == "running"
