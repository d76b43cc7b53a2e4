"""The database refuses bad budgets and bad ledger entries (that the ledger is append-only:
tests/core/test_append_only.py)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.access.keys import generate_key
from agents.models import Agent, ApiKey
from budgets.models import Budget, SpendEntry


@pytest.fixture
def agent() -> Agent:
    return Agent.objects.create(name="support", model="gpt-4o-mini")


@pytest.fixture
def api_key() -> ApiKey:
    new = generate_key()
    return ApiKey.objects.create(
        name="ci", prefix=new.prefix, secret_hash=new.secret_hash, scopes="read"
    )


def _refused(**fields: Any) -> None:
    before = Budget.objects.count()
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.create(**fields)
    assert Budget.objects.count() == before


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_valid_budgets_of_every_scope_are_stored(agent: Agent, api_key: ApiKey) -> None:
    Budget.objects.create(scope="global", limit_usd=Decimal(1000))
    Budget.objects.create(scope="global", window="monthly", limit_usd=Decimal(20000))
    Budget.objects.create(scope="agent", agent=agent, limit_usd=Decimal(800))
    Budget.objects.create(scope="api_key", api_key=api_key, limit_usd=Decimal(0))
    Budget.objects.create(
        scope="agent",
        agent=agent,
        window="monthly",
        limit_usd=Decimal(5),
        raise_usd=Decimal(10),
        raise_until=timezone.now() + timedelta(hours=1),
    )
    assert Budget.objects.count() == 5


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("scope", "target"),
    [
        pytest.param("global", "agent", id="global-with-agent"),
        pytest.param("global", "api_key", id="global-with-key"),
        pytest.param("agent", None, id="agent-without-agent"),
        pytest.param("agent", "api_key", id="agent-with-key"),
        pytest.param("api_key", None, id="key-without-key"),
        pytest.param("api_key", "agent", id="key-with-agent"),
        pytest.param("team", None, id="unknown-scope"),
    ],
)
def test_a_budget_must_target_what_its_scope_says(
    agent: Agent, api_key: ApiKey, scope: str, target: str | None
) -> None:
    targets: dict[str, Any] = {"agent": {"agent": agent}, "api_key": {"api_key": api_key}}
    _refused(scope=scope, limit_usd=Decimal(10), **targets.get(target or "", {}))


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"limit_usd": Decimal("-0.01")}, id="negative-limit"),
        pytest.param({"window": "weekly"}, id="unknown-window"),
        pytest.param({"raise_usd": Decimal(50)}, id="raise-without-raise-until"),
        pytest.param({"raise_usd": Decimal(0), "raise_until": timezone.now()}, id="raise-of-zero"),
        pytest.param({"warn_at_pct": 90, "alert_at_pct": 80}, id="warn-above-alert"),
        pytest.param({"warn_at_pct": 0}, id="warn-at-zero"),
        pytest.param({"alert_at_pct": 101}, id="alert-over-100"),
    ],
)
def test_the_database_refuses_a_bad_budget(fields: dict[str, Any]) -> None:
    _refused(**({"scope": "global", "limit_usd": Decimal(10)} | fields))


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_there_is_one_global_budget_per_window() -> None:
    Budget.objects.create(scope="global", limit_usd=Decimal(1000))
    _refused(scope="global", limit_usd=Decimal(500))


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_an_agent_has_one_budget_per_window(agent: Agent) -> None:
    Budget.objects.create(scope="agent", agent=agent, limit_usd=Decimal(10))
    _refused(scope="agent", agent=agent, limit_usd=Decimal(20))
    other = Agent.objects.create(name="other", model="gpt-4o-mini")
    Budget.objects.create(scope="agent", agent=other, limit_usd=Decimal(20))


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_removing_raise_until_from_a_raised_budget_is_refused() -> None:
    budget = Budget.objects.create(
        scope="global",
        limit_usd=Decimal(10),
        raise_usd=Decimal(5),
        raise_until=timezone.now() + timedelta(hours=1),
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        Budget.objects.filter(pk=budget.pk).update(raise_until=None)


# --- SpendEntry ----------------------------------------------------------------------------


@pytest.fixture
def entry() -> SpendEntry:
    return SpendEntry.objects.create(
        execution_id=uuid.uuid4(),
        agent_name="support",
        model="gpt-4o-mini",
        input_tokens=1000,
        output_tokens=500,
        input_usd_per_mtok=Decimal("0.15"),
        output_usd_per_mtok=Decimal("0.60"),
        cost_usd=Decimal("0.00045"),
    )


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_one_execution_is_charged_once(entry: SpendEntry) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        SpendEntry.objects.create(
            execution_id=entry.execution_id,
            agent_name="support",
            model="gpt-4o-mini",
            input_usd_per_mtok=Decimal(0),
            output_usd_per_mtok=Decimal(0),
            cost_usd=Decimal(0),
        )
    assert SpendEntry.objects.count() == 1


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_negative_charge_is_refused() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        SpendEntry.objects.create(
            execution_id=uuid.uuid4(),
            agent_name="support",
            model="gpt-4o-mini",
            input_usd_per_mtok=Decimal(0),
            output_usd_per_mtok=Decimal(0),
            cost_usd=Decimal("-1"),
        )
