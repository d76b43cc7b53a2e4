"""One open incident per cause; a timeline keeps its incident."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from incidents.models import Incident, IncidentEvent


def _incident(**overrides: object) -> Incident:
    fields: dict[str, object] = {
        "kind": "breaker_open",
        "dedup_key": "breaker:support",
        "title": "Breaker open for support",
        "agent_name": "support",
    }
    return Incident.objects.create(**(fields | overrides))


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize("status", ["open", "acknowledged"])
def test_a_second_unresolved_incident_with_the_same_key_is_refused(status: str) -> None:
    _incident(status=status)
    with pytest.raises(IntegrityError), transaction.atomic():
        _incident(title="again")
    assert Incident.objects.count() == 1


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_a_new_incident_may_open_once_the_previous_one_is_resolved() -> None:
    first = _incident()
    Incident.objects.filter(pk=first.pk).update(status="resolved", resolved_at=timezone.now())
    second = _incident(title="it broke again")
    # And a third resolved one with the same key is fine too: only unresolved ones are unique.
    _incident(status="resolved", resolved_at=timezone.now())
    assert Incident.objects.filter(dedup_key="breaker:support").count() == 3
    with pytest.raises(IntegrityError), transaction.atomic():
        Incident.objects.filter(pk=first.pk).update(status="open", resolved_at=None)
    assert Incident.objects.get(pk=second.pk).status == "open"


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_other_keys_do_not_collide() -> None:
    _incident()
    _incident(dedup_key="breaker:billing")
    assert Incident.objects.count() == 2


@pytest.mark.dbmatrix
@pytest.mark.django_db
@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"status": "resolved"}, id="resolved-without-time"),
        pytest.param({"status": "closed"}, id="unknown-status"),
        pytest.param({"severity": "apocalyptic"}, id="unknown-severity"),
    ],
)
def test_the_database_refuses_a_bad_incident(fields: dict[str, object]) -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        _incident(**fields)
    assert not Incident.objects.exists()


# --- IncidentEvent (append-only: tests/core/test_append_only.py) --------------------------


@pytest.fixture
def event() -> IncidentEvent:
    incident = _incident()
    return IncidentEvent.objects.create(incident=incident, kind="opened", message="breaker opened")


@pytest.mark.dbmatrix
@pytest.mark.django_db
def test_an_incident_with_a_timeline_cannot_be_deleted(event: IncidentEvent) -> None:
    from django.db.models import ProtectedError

    with pytest.raises(ProtectedError):
        event.incident.delete()
