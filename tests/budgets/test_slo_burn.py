"""The SLO burn job opens one ``slo_burn`` incident per agent and SLI on the multiwindow burn
conditions (fast: critical, slow: major), escalates and resolves when the burn stops (the SLO
objective gauges are read at scrape time: tests/agents/test_metrics.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from agents.models import Agent
from budgets.rollups import traffic_rollups_refresh
from budgets.slo_burn import slo_burn_check, slo_burn_key
from incidents.models import Incident, IncidentStatus
from tests.budgets.conftest import NOW, execution

MINUTE = NOW.replace(minute=37, second=20)
pytestmark = pytest.mark.django_db


def ago(**delta: float) -> datetime:
    return MINUTE - timedelta(**delta)


def many(count: int, *, at: datetime, **fields: Any) -> None:
    for _ in range(count):
        execution(at=at, **fields)


def refresh(now: datetime = MINUTE) -> None:
    traffic_rollups_refresh(now=now, minutes=24 * 60)


def actions(now: datetime = MINUTE) -> dict[tuple[str, str], str]:
    return {(c.agent, c.sli): c.action for c in slo_burn_check(now=now)}


@pytest.fixture
def support() -> Agent:
    return Agent.objects.create(name="support", model="m", slo_availability=0.99)


def test_a_fast_burn_opens_one_critical_incident_with_the_figures_and_it_resolves(
    support: Agent,
) -> None:
    # 20% failing over the last minutes: a burn rate of 20 (over 14.4) in every window.
    many(80, at=ago(minutes=2))
    many(20, at=ago(minutes=2), status="failed")
    refresh()

    assert actions() == {("support", "availability"): "opened", ("support", "latency"): "quiet"}
    incident = Incident.objects.get(dedup_key=slo_burn_key("support", "availability"))
    assert (incident.kind, incident.severity, incident.agent_name) == (
        "slo_burn",
        "critical",
        "support",
    )
    assert incident.dedup_key == "slo:support:availability"
    assert incident.title.startswith("SLO fast burn on support: availability")
    (opened,) = incident.events.all()
    assert "1h 20.0x, 5m 20.0x (both over 14.4x" in opened.message
    assert opened.data["burn_rates"]["1h"] == pytest.approx(20.0)
    assert opened.data["valid"]["5m"] == 100
    assert opened.data["bad"]["5m"] == 20
    assert opened.data["error_budget_remaining"] == pytest.approx(1 - 20 / (0.01 * 100))

    assert actions() == {("support", "availability"): "open", ("support", "latency"): "quiet"}
    assert incident.events.count() == 1  # no timeline entry per run while it burns

    # 31 minutes later without traffic the 5m and 30m windows are empty: the burn has stopped.
    later = MINUTE + timedelta(minutes=31)
    assert actions(later)[("support", "availability")] == "resolved"
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.last().kind == "resolved"  # type: ignore[union-attr]
    assert actions(later)[("support", "availability")] == "quiet"


def test_a_slow_burn_is_major_and_turns_critical_when_the_burn_speeds_up(
    support: Agent,
) -> None:
    # 8% failing over the last 25 minutes: 8x over 6h and 30m, under 14.4x over 1h.
    for minute in range(5, 30, 5):
        many(23, at=ago(minutes=minute))
        many(2, at=ago(minutes=minute), status="failed")
    refresh()
    assert actions()[("support", "availability")] == "opened"
    incident = Incident.objects.get(dedup_key="slo:support:availability")
    assert incident.severity == "major"
    assert incident.title.startswith("SLO slow burn on support")

    many(50, at=ago(minutes=1), status="failed")  # now 1h and 5m are both far over 14.4x
    refresh()
    assert actions()[("support", "availability")] == "escalated"
    incident.refresh_from_db()
    assert incident.severity == "critical"
    assert [e.kind for e in incident.events.order_by("pk")] == ["opened", "severity", "escalated"]
    assert Incident.objects.filter(kind="slo_burn").count() == 1


def test_the_latency_sli_burns_on_requests_over_the_agents_threshold(support: Agent) -> None:
    support.slo_latency_ms = 800
    support.save()
    many(60, at=ago(minutes=1), latency_ms=900)  # slow for this agent, fine for the default
    many(40, at=ago(minutes=1), latency_ms=100)
    refresh()
    assert actions() == {("support", "availability"): "quiet", ("support", "latency"): "opened"}
    incident = Incident.objects.get(dedup_key="slo:support:latency")
    assert "latency (<= 800 ms)" in incident.title
    assert incident.events.get().data["latency_ms"] == 800


def test_an_open_burn_of_a_deleted_agent_resolves(support: Agent) -> None:
    many(50, at=ago(minutes=1), status="failed")
    refresh()
    actions()
    support.delete()
    assert actions() == {("support", "availability"): "resolved"}
    assert not Incident.objects.exclude(status=IncidentStatus.RESOLVED).exists()


def test_quiet_runs_cost_four_queries(support: Agent, django_assert_num_queries: Any) -> None:
    many(10, at=ago(minutes=1))
    refresh()
    with django_assert_num_queries(4):  # agents, minute rows, hour rows, open burn incidents
        assert set(actions().values()) == {"quiet"}


def test_the_burn_task_runs_the_service_and_is_scheduled_every_minute(support: Agent) -> None:
    from budgets.tasks import slo_burn_check as task
    from console.schedule import JOBS

    assert task() == 0
    job = next(job for job in JOBS if job.name == "slo-burn-check")
    assert (job.task, job.every_s) == ("budgets.tasks.slo_burn_check", 60)
