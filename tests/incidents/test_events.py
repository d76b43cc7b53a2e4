from __future__ import annotations

from typing import Any

import pytest
from django.utils import timezone

from agents.executions.processes import process_owner_id
from agents.models import WorkerProcess
from agents.runtime.state import BreakerState, Transition
from incidents.events import (
    IncidentEvents,
    dependency_incidents_sweep,
    dependency_to_incident,
    transition_to_incident,
)
from incidents.models import Incident, IncidentEvent, IncidentStatus, Severity

pytestmark = pytest.mark.django_db

OPEN = Transition(
    "deployment:7", BreakerState.CLOSED, BreakerState.OPEN, 1.0, "5 consecutive failures"
)
HALF = Transition(
    "deployment:7", BreakerState.OPEN, BreakerState.HALF_OPEN, 31.0, "recovery timeout"
)
REOPEN = Transition(
    "deployment:7", BreakerState.HALF_OPEN, BreakerState.OPEN, 32.0, "half-open probe failed"
)
CLOSE = Transition(
    "deployment:7", BreakerState.HALF_OPEN, BreakerState.CLOSED, 70.0, "half-open probes succeeded"
)


def test_an_opened_breaker_opens_one_incident_with_a_timeline() -> None:
    for transition in (OPEN, HALF, REOPEN):
        transition_to_incident(transition)
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.OPEN
    assert incident.title == "Circuit breaker open: deployment 7"
    assert incident.severity == Severity.MAJOR
    assert [e.kind for e in incident.events.all()] == ["opened", "half_open", "recurred"]


def test_a_recovered_breaker_resolves_its_incident(settings: Any) -> None:
    transition_to_incident(OPEN)
    transition_to_incident(CLOSE)
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.resolved_at is not None
    last = incident.events.last()
    assert last is not None
    assert last.kind == "resolved"
    # The next outage is a new incident once the flap cool-down has passed (here: none).
    settings.BREAKWATER_NOTIFY_FLAP_S = 0
    transition_to_incident(OPEN)
    assert Incident.objects.filter(status=IncidentStatus.OPEN).count() == 1
    assert Incident.objects.count() == 2


def test_a_breaker_opening_again_within_the_flap_cool_down_reopens_its_incident() -> None:
    transition_to_incident(OPEN)
    transition_to_incident(CLOSE)
    transition_to_incident(OPEN)
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.OPEN
    assert incident.resolved_at is None
    assert [e.kind for e in incident.events.all()] == ["opened", "resolved", "reopened"]


def test_an_agent_breaker_is_critical_and_names_the_agent() -> None:
    transition_to_incident(
        Transition(
            "agent:support",
            BreakerState.CLOSED,
            BreakerState.FORCED_OPEN,
            1.0,
            "operator force_open",
        )
    )
    incident = Incident.objects.get()
    assert incident.severity == Severity.CRITICAL
    assert incident.agent_name == "support"


@pytest.mark.django_db(transaction=True)
def test_the_sink_writes_off_the_calling_thread_and_in_order() -> None:
    sink = IncidentEvents()
    for transition in (OPEN, HALF, CLOSE):
        sink.breaker_transition(transition)
    sink.close(wait=True)
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert [e.kind for e in incident.events.all()] == ["opened", "half_open", "resolved"]


# --- dependency outages --------------------------------------------------------------------------


def test_a_shared_state_outage_opens_one_critical_incident_every_process_adds_to() -> None:
    dependency_to_incident("state_unavailable", False, "redis: Connection refused (process 1)")
    dependency_to_incident("state_unavailable", False, "redis: Connection refused (process 2)")

    incident = Incident.objects.get()
    assert incident.kind == "dependency_down"
    assert incident.dedup_key == "dependency:state_unavailable"
    assert incident.severity == Severity.CRITICAL
    assert incident.title == "Shared state (Redis) unreachable: executions are refused"
    assert [(e.kind, e.message) for e in incident.events.all()] == [
        ("opened", "redis: Connection refused (process 1)"),
        ("recurred", "redis: Connection refused (process 2)"),
    ]


def test_the_outage_resolves_when_a_process_reports_the_state_answering_again(
    settings: Any,
) -> None:
    settings.BREAKWATER_NOTIFY_FLAP_S = 0  # past the flap cool-down: the next outage is new
    dependency_to_incident("state_unavailable", False, "redis: Connection refused")
    dependency_to_incident("state_unavailable", True, "state store answered")

    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    resolved = incident.events.get(kind="resolved")
    assert resolved.message == "answering again (state store answered)"
    # The next outage is a new incident; a report of "answering" with nothing open is nothing.
    dependency_to_incident("state_unavailable", True, "state store answered")
    dependency_to_incident("state_unavailable", False, "redis: timeout")
    assert Incident.objects.count() == 2
    assert Incident.objects.filter(status=IncidentStatus.OPEN).count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_sink_turns_dependency_changes_into_an_incident_off_the_calling_thread() -> None:
    sink = IncidentEvents()
    sink.dependency_changed("recording_unavailable", False, "journal: disk full")
    sink.dependency_changed("recording_unavailable", True, "journal written")
    sink.close(wait=True)
    incident = Incident.objects.get()
    assert incident.dedup_key == "dependency:recording_unavailable"
    assert [e.kind for e in incident.events.all()] == ["opened", "resolved"]


def _process(pid: int, **fields: Any) -> str:
    from agents.models import WorkerProcess

    row = WorkerProcess.objects.create(id=f"p-{pid}", kind="serve", host="h", pid=pid, **fields)
    return row.id


def test_an_outage_every_reporter_of_which_is_gone_is_resolved_by_the_sweep() -> None:
    now = timezone.now()
    first, second = _process(1), _process(2)
    dependency_to_incident("state_unavailable", False, "refused", process=first)
    dependency_to_incident("state_unavailable", False, "refused", process=second)
    assert dependency_incidents_sweep() == []  # both alive

    WorkerProcess.objects.filter(id=first).update(dead_at=now)
    assert dependency_incidents_sweep() == []  # one still runs: it reports the recovery

    WorkerProcess.objects.filter(id=second).update(stopped_at=now)
    incident = Incident.objects.get()
    assert dependency_incidents_sweep() == [incident.pk]
    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED
    resolved = incident.events.get(kind="resolved")
    assert resolved.message.startswith("every process that reported it is gone (2)")
    assert resolved.data["processes"] == ["p-1", "p-2"]


def test_each_outage_entry_names_the_process_that_saw_it() -> None:
    dependency_to_incident("recording_unavailable", False, "journal: disk full")
    opened = IncidentEvent.objects.get()
    assert opened.data == {"dependency": "recording_unavailable", "process": process_owner_id()}
