"""Cost spike detection: 5-minute spend far above its recent baseline opens an incident."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from budgets.services import cost_spike_detect
from incidents.models import Incident
from tests.budgets.conftest import NOW, spend

pytestmark = pytest.mark.django_db


def history(agent: str = "support", *, per_5_min: str = "0.50", hours: int = 6) -> None:
    """Steady spend: ``per_5_min`` dollars in each 5 minutes of the ``hours`` before the last
    5 minutes."""
    for slot in range(hours * 12):
        spend(per_5_min, at=NOW - timedelta(minutes=5 + 5 * slot + 2), agent=agent)


def actions(**kwargs: Any) -> dict[str, str]:
    return {check.agent: check.action for check in cost_spike_detect(now=NOW, **kwargs)}


def test_spend_far_above_its_baseline_opens_a_cost_spike_incident_with_the_numbers() -> None:
    history()  # $0.50 per 5 minutes
    spend("2.10", at=NOW - timedelta(minutes=2))  # 4.2x

    assert actions() == {"support": "opened"}

    incident = Incident.objects.get()
    assert (incident.kind, incident.agent_name, incident.dedup_key) == (
        "cost_spike",
        "support",
        "cost_spike:support",
    )
    data = incident.events.get(kind="opened").data
    assert Decimal(data["recent_usd"]) == Decimal("2.10")
    assert Decimal(data["baseline_usd"]) == Decimal("0.5")
    assert data["ratio"] == 4.2
    assert data["factor"] == 3.0
    assert "4.2x" in incident.title


def test_spend_within_three_times_its_baseline_is_not_a_spike() -> None:
    history()
    spend("1.45", at=NOW - timedelta(minutes=2))  # 2.9x
    assert actions() == {"support": "quiet"}
    assert not Incident.objects.exists()


def test_a_small_absolute_spend_is_not_a_spike_however_fast_it_grew() -> None:
    history(per_5_min="0.01")
    spend("0.90", at=NOW - timedelta(minutes=2))  # 90x, but under $1
    assert actions() == {"support": "quiet"}


def test_without_history_there_is_no_baseline_and_no_alarm() -> None:
    spend("50", at=NOW - timedelta(minutes=2))
    (check,) = cost_spike_detect(now=NOW)
    assert (check.baseline_usd, check.action) == (None, "quiet")
    assert not Incident.objects.exists()


def test_a_young_agents_baseline_is_its_average_since_it_started_spending() -> None:
    history(hours=1)  # only an hour of $0.50 per 5 min
    spend("1.40", at=NOW - timedelta(minutes=2))  # 2.8x its real baseline, 16.8x if diluted
    (check,) = cost_spike_detect(now=NOW)
    assert check.baseline_usd == Decimal("0.5")
    assert check.action == "quiet"


def test_the_factor_and_floor_are_configurable(settings: Any) -> None:
    history()
    spend("1.10", at=NOW - timedelta(minutes=2))  # 2.2x
    assert actions() == {"support": "quiet"}
    settings.BREAKWATER_COST_SPIKE_FACTOR = 2.0
    settings.BREAKWATER_COST_SPIKE_MIN_USD = 5.0
    assert actions() == {"support": "quiet"}  # above 2x, but under $5
    settings.BREAKWATER_COST_SPIKE_MIN_USD = 1.0
    assert actions() == {"support": "opened"}


def test_an_open_spike_stays_one_incident_and_resolves_when_spend_calms_down() -> None:
    history()
    burst = spend("3", at=NOW - timedelta(minutes=2))
    assert actions() == {"support": "opened"}
    assert actions() == {"support": "open"}  # still spiking: no new incident, no noise
    incident = Incident.objects.get()
    assert incident.events.count() == 1

    # Five minutes on: the burst has left the recent window; spend is back to 1.2x.
    later = NOW + timedelta(minutes=5)
    spend("0.60", at=later - timedelta(minutes=1))
    checks = {c.agent: c for c in cost_spike_detect(now=later)}

    assert checks["support"].action == "resolved"
    incident.refresh_from_db()
    assert incident.status == "resolved"
    assert incident.events.filter(kind="resolved").count() == 1
    assert burst.at < later - timedelta(minutes=5)


def test_a_spike_between_one_and_a_half_and_three_times_stays_open() -> None:
    history()
    spend("3", at=NOW - timedelta(minutes=2))
    actions()
    later = NOW + timedelta(minutes=5)
    spend("1.00", at=later - timedelta(minutes=1))  # 2x the baseline: not calm yet
    assert {c.agent: c.action for c in cost_spike_detect(now=later)}["support"] == "open"


def test_an_agent_that_stopped_spending_has_its_spike_resolved() -> None:
    history()
    spend("3", at=NOW - timedelta(minutes=2))
    actions()
    much_later = NOW + timedelta(hours=7)  # nothing recent, no history left
    assert {c.agent: c.action for c in cost_spike_detect(now=much_later)} == {"support": "resolved"}


def test_spikes_are_per_agent() -> None:
    history("support")
    history("billing")
    spend("5", at=NOW - timedelta(minutes=1), agent="billing")
    spend("0.5", at=NOW - timedelta(minutes=1), agent="support")
    assert actions() == {"billing": "opened", "support": "quiet"}
    assert list(Incident.objects.values_list("agent_name", flat=True)) == ["billing"]


def test_detection_reads_three_queries_when_nothing_changes(
    django_assert_num_queries: Any,
) -> None:
    history()
    with django_assert_num_queries(3):
        cost_spike_detect(now=NOW)


def test_the_cost_spike_task_counts_open_spikes() -> None:
    from django.utils import timezone

    from budgets.tasks import cost_spike_detect as task

    now = timezone.now()
    for slot in range(12):
        spend("0.5", at=now - timedelta(minutes=7 + 5 * slot))
    spend("4", at=now - timedelta(seconds=30))
    assert task() == 1
