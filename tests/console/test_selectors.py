"""The dashboard's reads: what each figure counts, and how many queries a tick costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from agents.config.apply import config_apply, config_parse
from agents.models import Agent
from budgets.rollups import rollups_refresh
from budgets.selectors import budget_list, budget_spans, latency_percentile
from console.selectors import dashboard_catalog, dashboard_figures
from incidents.services import incident_open
from tests.budgets.conftest import execution

pytestmark = pytest.mark.django_db

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: cheap, provider: sim, upstream_model: c-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: helper, model: m, fallback_models: [cheap], daily_budget_usd: 10}
  - {name: quiet, model: cheap, enabled: false}
budgets:
  - {scope: global, daily_limit_usd: 1000}
"""


@pytest.fixture
def configured() -> None:
    config_apply(document=config_parse(DOC))


def _today_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _figures(now: datetime | None = None, usage: dict[str, tuple[int, int]] | None = None) -> Any:
    now = now or timezone.now()
    spans = budget_spans(budget_list(), now=now)
    return dashboard_figures(now=now, spans=spans, usage={} if usage is None else usage)


def test_the_catalog_lists_disabled_agents_and_every_model_an_agent_may_call(
    configured: None, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(3):
        catalog = dashboard_catalog()
    agents = {agent.name: agent for agent in catalog.agents}
    assert list(agents) == ["helper", "quiet"]
    assert agents["helper"].models == ("m", "cheap")
    assert agents["helper"].enabled
    assert not agents["quiet"].enabled
    assert {row["model"] for row in catalog.deployments} == {"m", "cheap"}
    assert {(b.scope, b.target) for b in catalog.budgets} == {("global", "*"), ("agent", "helper")}


def test_a_tick_costs_six_queries_at_most(configured: None, django_assert_num_queries: Any) -> None:
    now = timezone.now()
    execution(at=now - timedelta(seconds=5), agent="helper")
    execution(at=now - timedelta(seconds=5), agent="helper", status="running", latency_ms=None)
    # Rollups, recent executions, running and queued, incidents: four.
    with django_assert_num_queries(4):
        dashboard_figures(now=now, spans=[], usage={})
    # With an incident open (its newest row) and budgets to forecast: six.
    incident_open(kind="error_rate", dedup_key="errors:helper", title="t", message="m")
    rollups_refresh()
    spans = budget_spans(budget_list(), now=now)
    assert len(spans) == 2
    with django_assert_num_queries(6):
        dashboard_figures(now=now, spans=spans, usage={})


def test_the_last_minute_counts_by_status_with_latency_percentiles(configured: None) -> None:
    now = timezone.now()
    recent = now - timedelta(seconds=30)
    for _ in range(9):
        execution(at=recent, agent="helper", latency_ms=90, cost="0.01")
    execution(at=recent, agent="helper", latency_ms=1800, status="degraded")
    execution(at=recent, agent="helper", latency_ms=5, status="failed", cost="0")
    execution(at=recent, agent="helper", status="succeeded", cached=True, cost="0")
    execution(at=now - timedelta(seconds=90), agent="helper")  # before the last minute
    execution(at=recent, agent="helper", status="running", latency_ms=None)
    execution(at=recent, agent="helper", status="queued", latency_ms=None)

    figures = _figures(now)
    helper = figures.agents["helper"]
    minute = helper.last_minute
    assert (minute.requests, minute.succeeded, minute.degraded, minute.failed) == (12, 10, 1, 1)
    assert minute.errors == 2
    assert minute.cached == 1
    assert minute.cost_usd == Decimal("0.091")
    assert 75 < latency_percentile(minute.buckets, 0.5) <= 100  # type: ignore[operator]
    assert 1500 < latency_percentile(minute.buckets, 0.95) <= 2000  # type: ignore[operator]
    assert (helper.running, helper.queued) == (1, 1)
    if now - timedelta(seconds=90) >= _today_start(now):
        assert helper.today.requests == 13


def test_today_adds_the_executions_since_the_last_rollup_once(configured: None) -> None:
    now = timezone.now()
    earlier = max(now - timedelta(minutes=3), _today_start(now))
    for _ in range(4):
        execution(at=earlier, agent="helper", cost="0.5")
    execution(at=earlier, agent="helper", status="failed", cost="0")
    execution(at=_today_start(now) - timedelta(hours=1), agent="helper")  # yesterday
    assert _figures().agents["helper"].today.requests == 5  # no rollup yet: from the rows

    rollups_refresh()
    figures = _figures()
    assert figures.rolled_up_at is not None
    assert figures.agents["helper"].today.requests == 5  # the rollup, not the rows again

    after = timezone.now()
    execution(at=after, agent="helper", cost="0.25", status="degraded")
    today = _figures().agents["helper"].today
    assert (today.requests, today.succeeded, today.degraded, today.failed) == (6, 4, 1, 1)
    assert today.errors == 2
    assert today.cost_usd == Decimal("2.25")

    rollups_refresh()
    assert _figures().agents["helper"].today.requests == 6


def test_budgets_take_their_spend_from_the_counters(configured: None) -> None:
    now = timezone.now()
    spans = budget_spans(budget_list(), now=now)
    key = next(span.key for span in spans if span.budget.scope == "agent")
    figures = dashboard_figures(now=now, spans=spans, usage={key: (8_500_000, 500_000)})
    assert figures.budgets is not None
    helper = next(status for status in figures.budgets if status.target == "helper")
    assert (helper.spent_usd, helper.reserved_usd) == (Decimal("8.5"), Decimal("0.5"))
    assert helper.state == "warning"
    assert helper.remaining_usd == Decimal(1)
    # The counters could not be read: no budget figures rather than made-up zeros.
    assert dashboard_figures(now=now, spans=spans, usage=None).budgets is None


def test_unresolved_incidents_are_counted_per_agent_with_the_newest(configured: None) -> None:
    first, _ = incident_open(
        kind="error_rate", dedup_key="a", title="older", message="m", agent_name="helper"
    )
    newest, _ = incident_open(
        kind="error_rate", dedup_key="b", title="newer", message="m", agent_name="helper"
    )
    incident_open(kind="ledger_drift", dedup_key="c", title="everyone's", message="m")
    resolved, _ = incident_open(
        kind="error_rate", dedup_key="d", title="over", message="m", agent_name="helper"
    )
    resolved.status, resolved.resolved_at = "resolved", timezone.now()
    resolved.save()
    groups = {(g.agent, g.status): g for g in _figures().incidents}
    assert set(groups) == {("helper", "open"), ("", "open")}
    assert groups[("helper", "open")].count == 2
    assert groups[("helper", "open")].newest["id"] == newest.pk != first.pk
    assert groups[("", "open")].newest["agent"] is None


def test_an_agent_that_only_has_history_still_counts(configured: None) -> None:
    execution(at=timezone.now(), agent="deleted-since")
    assert not Agent.objects.filter(name="deleted-since").exists()
    assert _figures().agents["deleted-since"].last_minute.requests == 1
