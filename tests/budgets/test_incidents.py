"""Budget incidents from the periodic observation: exhausted and forecast over the limit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from agents.config.apply import config_apply, config_parse
from agents.models import Agent
from budgets.incidents import exhausted_key, forecast_key
from budgets.models import Budget
from budgets.selectors import budget_spans
from budgets.services import budgets_observe
from incidents.models import Incident, IncidentStatus, Severity
from tests.budgets.conftest import NOW, Counters, budget, spend

pytestmark = pytest.mark.django_db


def _spent(counters: Counters, b: Budget, usd: str, *, now: datetime = NOW) -> None:
    (span,) = budget_spans([b], now=now)
    counters.settle(span.key, int(Decimal(usd) * 1_000_000))


def _incident(key: str) -> Incident:
    return Incident.objects.get(dedup_key=key)


def test_a_used_up_global_budget_opens_a_critical_incident_with_the_figures() -> None:
    b = budget(limit="10")
    counters = Counters()
    _spent(counters, b, "10")

    budgets_observe(now=NOW, usage_reader=counters, floors={})

    incident = _incident(exhausted_key(b.pk))
    assert incident.kind == "budget_exhausted"
    assert incident.severity == Severity.CRITICAL
    assert incident.title == "Budget exhausted: daily global budget ($10.00)"
    assert incident.agent_name == ""
    (opened,) = incident.events.all()
    assert opened.kind == "opened"
    assert opened.message.startswith("$10.00 of $10.00 used ($10.00 spent, $0.00 reserved)")
    assert opened.data["limit_usd"] == "10"
    assert opened.data["spent_usd"] == "10"
    assert opened.data["left_usd"] == "0"
    assert opened.data["window_id"] == "2026-03-11"


def test_an_agent_budget_that_cannot_admit_its_smallest_call_is_exhausted_before_100_pct() -> None:
    agent = Agent.objects.create(name="support", model="m")
    b = budget("agent", agent=agent, limit="10")
    counters = Counters()
    _spent(counters, b, "9.5")

    budgets_observe(now=NOW, usage_reader=counters, floors={b.pk: 1_000_000})  # a $1 call

    incident = _incident(exhausted_key(b.pk))
    assert incident.severity == Severity.MAJOR
    assert incident.agent_name == "support"
    opened = incident.events.get()
    assert "the $0.5000 left cannot admit the smallest call ($1.0000)" in opened.message
    assert opened.data["smallest_call_usd"] == "1"


def test_the_smallest_call_comes_from_the_live_configuration_by_default() -> None:
    config_apply(
        document=config_parse(
            """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1000}
agents:
  - {name: support, model: m, max_tokens: 1000, daily_budget_usd: 10}
"""
        )
    )
    b = Budget.objects.get(agent__name="support")
    counters = Counters()
    _spent(counters, b, "9.5")  # $0.50 left; a call at max_tokens costs $1

    (status,) = budgets_observe(now=NOW, usage_reader=counters)

    assert status.state == "exceeded"
    assert _incident(exhausted_key(b.pk)).status == IncidentStatus.OPEN


def test_observing_an_exhausted_budget_again_adds_nothing_to_the_timeline() -> None:
    b = budget(limit="10")
    counters = Counters()
    _spent(counters, b, "10")
    for seconds in (0, 15, 30):
        budgets_observe(now=NOW + timedelta(seconds=seconds), usage_reader=counters, floors={})
    assert _incident(exhausted_key(b.pk)).events.count() == 1


def test_the_next_window_resolves_the_exhausted_incident() -> None:
    b = budget(limit="10")
    counters = Counters()
    _spent(counters, b, "12")
    budgets_observe(now=NOW, usage_reader=counters, floors={})

    tomorrow = NOW + timedelta(days=1)
    budgets_observe(now=tomorrow, usage_reader=counters, floors={})

    incident = _incident(exhausted_key(b.pk))
    assert incident.status == IncidentStatus.RESOLVED
    resolved = incident.events.last()
    assert resolved is not None
    assert resolved.kind == "resolved"
    assert resolved.message == "admitting calls again: $0.00 of $10.00 used in window 2026-03-12"
    assert resolved.data["window_id"] == "2026-03-12"


def test_a_raise_resolves_it_only_with_room_to_spare() -> None:
    b = budget(limit="10")
    counters = Counters()
    _spent(counters, b, "10")
    budgets_observe(now=NOW, usage_reader=counters, floors={})

    # $10 of $10.40: admitting again, but 96% used: a budget at the boundary stays open.
    Budget.objects.filter(pk=b.pk).update(
        raise_usd=Decimal("0.4"), raise_until=NOW + timedelta(hours=1)
    )
    budgets_observe(now=NOW, usage_reader=counters, floors={})
    assert _incident(exhausted_key(b.pk)).status == IncidentStatus.OPEN

    Budget.objects.filter(pk=b.pk).update(raise_usd=Decimal("1"))  # 91% used
    budgets_observe(now=NOW, usage_reader=counters, floors={})
    incident = _incident(exhausted_key(b.pk))
    assert incident.status == IncidentStatus.RESOLVED
    assert [e.kind for e in incident.events.all()] == ["opened", "resolved"]


def test_a_paused_budget_opens_no_incident() -> None:
    b = budget(limit="10", paused=True)
    counters = Counters()
    _spent(counters, b, "10")
    budgets_observe(now=NOW, usage_reader=counters, floors={})
    assert not Incident.objects.exists()


def test_a_deleted_budget_resolves_its_incident() -> None:
    b = budget(limit="10")
    counters = Counters()
    _spent(counters, b, "10")
    budgets_observe(now=NOW, usage_reader=counters, floors={})
    b.delete()

    budgets_observe(now=NOW, usage_reader=counters, floors={})

    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().message == "the budget was deleted"  # type: ignore[union-attr]


def test_a_forecast_over_the_limit_opens_a_minor_incident_and_resolves_under_95_pct() -> None:
    agent = Agent.objects.create(name="support", model="m")
    b = budget("agent", agent=agent, limit="20")
    counters = Counters()
    _spent(counters, b, "5")
    # $2 over the last hour; 14 hours left: forecast $5 + $28 = $33 > $20.
    spend("2", at=NOW - timedelta(minutes=30), agent="support")

    (status,) = budgets_observe(now=NOW, usage_reader=counters, floors={})

    assert status.forecast_usd == Decimal(33)
    incident = _incident(forecast_key(b.pk))
    assert incident.kind == "budget_forecast"
    assert incident.severity == Severity.MINOR
    assert incident.title == (
        "Budget forecast over its limit: daily agent budget support ($33.00 of $20.00)"
    )
    opened = incident.events.get()
    assert opened.data["forecast_usd"] == "33"
    assert opened.data["rate_usd_per_hour"] == "2"

    # Two hours on, nothing spent since: the rate is 0 and the forecast is the $5 spent.
    budgets_observe(now=NOW + timedelta(hours=2), usage_reader=counters, floors={})
    incident = _incident(forecast_key(b.pk))
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().message.startswith(  # type: ignore[union-attr]
        "back under the limit: forecast $5.00 against a limit of $20.00"
    )


def test_a_forecast_from_the_first_minutes_of_a_window_opens_nothing() -> None:
    b = budget(limit="20")
    counters = Counters()
    early = datetime(2026, 3, 11, 0, 5, tzinfo=UTC)
    _spent(counters, b, "1", now=early)
    spend("1", at=early - timedelta(minutes=1))  # $1 in 5 minutes: $287 by midnight

    (status,) = budgets_observe(now=early, usage_reader=counters, floors={})

    assert status.forecast_usd > status.limit_usd
    assert not Incident.objects.exists()
