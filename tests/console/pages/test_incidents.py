"""The incidents pages: a filterable list and one incident's timeline, actions and postmortem."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from console.pages.incidents import duration_text
from core.models import AuditEvent
from incidents.models import Incident, IncidentEvent
from incidents.services import incident_open
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


def _incident(title: str = "Breaker open", **fields: Any) -> Incident:
    incident, _ = incident_open(
        kind=fields.pop("kind", "breaker_open"),
        dedup_key=f"test:{title}:{Incident.objects.count()}",
        title=title,
        message="it broke",
        **fields,
    )
    return incident


def test_the_list_shows_severity_state_agent_times_and_duration(client_as: ClientAs) -> None:
    incident = _incident("Support is down", severity="critical", agent_name="support")
    Incident.objects.filter(pk=incident.pk).update(opened_at=timezone.now() - timedelta(minutes=5))
    page = client_as("viewer").get("/incidents/").content.decode()
    assert "Support is down" in page
    assert 'class="pill critical"' in page
    assert 'class="pill open"' in page
    assert "support" in page
    assert "<time datetime=" in page
    assert "5m 0" in page
    assert "so far" in page


def test_the_filters_narrow_the_list_and_are_labelled(client_as: ClientAs) -> None:
    _incident("Minor thing", severity="minor")
    resolved = _incident("Fixed thing", severity="critical")
    Incident.objects.filter(pk=resolved.pk).update(status="resolved", resolved_at=timezone.now())
    client = client_as("viewer")
    page = client.get("/incidents/?state=resolved").content.decode()
    assert "Fixed thing" in page
    assert "Minor thing" not in page
    page = client.get("/incidents/?severity=minor&state=open").content.decode()
    assert "Minor thing" in page
    assert "Fixed thing" not in page
    for field in ("f-state", "f-severity", "f-agent"):
        assert f'<label for="{field}">' in page


def test_an_unknown_filter_value_is_a_400_naming_it(client_as: ClientAs) -> None:
    response = client_as("viewer").get("/incidents/?state=sleeping")
    assert response.status_code == 400
    assert "state: unknown value &#x27;sleeping&#x27;" in response.content.decode()


def test_a_bad_cursor_is_a_400_naming_it(client_as: ClientAs) -> None:
    response = client_as("viewer").get("/incidents/?after=nonsense")
    assert response.status_code == 400
    assert "after: invalid cursor" in response.content.decode()


def test_the_list_is_paginated_and_the_next_page_continues_where_the_first_ended(
    client_as: ClientAs,
) -> None:
    for number in range(55):
        _incident(f"Incident number {number:02d}")
    client = client_as("viewer")
    first = client.get("/incidents/")
    assert first.content.decode().count('href="/incidents/') >= 50
    next_link = first.context["next_query"]
    assert next_link
    second = client.get(f"/incidents/?{next_link}")
    shown = {row["incident"].pk for row in first.context["rows"]}
    more = {row["incident"].pk for row in second.context["rows"]}
    assert len(shown) == 50
    assert len(more) == 5
    assert not shown & more
    assert second.context["next_query"] is None


def test_empty_states_say_what_to_do(client_as: ClientAs) -> None:
    client = client_as("viewer")
    assert "POST /api/v1/incidents" in client.get("/incidents/").content.decode()
    assert (
        "No incidents match these filters" in client.get("/incidents/?state=open").content.decode()
    )


@pytest.mark.parametrize("count", [1, 120])
def test_the_list_takes_the_same_few_queries_whatever_the_number_of_incidents(
    count: int, django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    for number in range(count):
        _incident(f"Incident {number}")
    client = client_as("viewer")
    with django_assert_max_num_queries(6):
        assert client.get("/incidents/?severity=major").status_code == 200


@pytest.mark.parametrize("events", [1, 200])
def test_the_detail_takes_the_same_few_queries_whatever_the_length_of_its_timeline(
    events: int, django_assert_max_num_queries: Any, client_as: ClientAs
) -> None:
    incident = _incident()
    for number in range(events):
        IncidentEvent(incident=incident, kind="comment", message=f"note {number}").save()
    client = client_as("operator")
    with django_assert_max_num_queries(6):
        assert client.get(f"/incidents/{incident.pk}/").status_code == 200


def test_the_detail_shows_the_timeline_in_order(client_as: ClientAs) -> None:
    incident = _incident()
    IncidentEvent(incident=incident, kind="comment", message="looking into it").save()
    page = client_as("viewer").get(f"/incidents/{incident.pk}/").content.decode()
    assert '<ol class="timeline">' in page
    assert page.index("it broke") < page.index("looking into it")


def test_an_unknown_incident_is_404(client_as: ClientAs) -> None:
    assert client_as("viewer").get("/incidents/999999/").status_code == 404


def test_an_operator_acknowledges_then_resolves_and_each_is_audited(client_as: ClientAs) -> None:
    incident = _incident()
    client = client_as("operator")
    response = client.post(f"/incidents/{incident.pk}/acknowledge/", follow=True)
    assert f"Incident #{incident.pk} acknowledged." in response.content.decode()
    response = client.post(
        f"/incidents/{incident.pk}/resolve/", {"note": "restarted the pool"}, follow=True
    )
    assert f"Incident #{incident.pk} resolved." in response.content.decode()
    incident.refresh_from_db()
    assert incident.status == "resolved"
    assert incident.acknowledged_by == "user:operator-user"
    kinds = list(incident.events.values_list("kind", flat=True))
    assert kinds == ["opened", "acknowledged", "resolved", "comment"]
    audits = AuditEvent.objects.filter(
        action="incident_update", target_id=str(incident.pk), actor="user:operator-user"
    )
    assert [audit.after["status"] for audit in audits.order_by("at", "id")] == [
        "acknowledged",
        "resolved",
    ]


def test_acknowledging_a_resolved_incident_is_refused_with_a_message(client_as: ClientAs) -> None:
    incident = _incident()
    client = client_as("operator")
    client.post(f"/incidents/{incident.pk}/resolve/")
    response = client.post(f"/incidents/{incident.pk}/acknowledge/", follow=True)
    assert "was not changed" in response.content.decode()
    assert "cannot be acknowledged" in response.content.decode()


def test_resolve_asks_for_confirmation(client_as: ClientAs) -> None:
    incident = _incident()
    page = client_as("operator").get(f"/incidents/{incident.pk}/").content.decode()
    assert 'data-confirm="Resolve incident' in page


def test_a_comment_is_added_to_the_timeline_and_an_empty_one_is_refused(
    client_as: ClientAs,
) -> None:
    incident = _incident()
    client = client_as("operator")
    response = client.post(f"/incidents/{incident.pk}/comment/", {"comment": "  "}, follow=True)
    assert "Comment: must not be empty" in response.content.decode()
    client.post(f"/incidents/{incident.pk}/comment/", {"comment": "pool drained"})
    assert incident.events.filter(kind="comment", message="pool drained").exists()
    assert AuditEvent.objects.filter(
        action="incident_update", after__comment="pool drained"
    ).exists()


def test_the_postmortem_is_saved_audited_and_read_only_for_viewers(client_as: ClientAs) -> None:
    incident = _incident()
    fields = {
        "impact": "Support answered from the fallback for 12 minutes.",
        "root_cause": "Upstream rate limit.",
        "resolution": "Raised the provider quota.",
        "lessons": "Alert on 429s earlier.",
    }
    client_as("operator").post(f"/incidents/{incident.pk}/postmortem/", fields)
    incident.refresh_from_db()
    assert {name: getattr(incident, name) for name in fields} == fields
    audit = AuditEvent.objects.get(action="incident_update", target_id=str(incident.pk))
    assert audit.after == fields
    page = client_as("viewer").get(f"/incidents/{incident.pk}/").content.decode()
    for label in ("Impact", "Root cause", "Solution", "Lesson"):
        assert f"<dt>{label}</dt>" in page
    assert "Raised the provider quota." in page
    assert "<textarea" not in page
    assert "Save postmortem" not in page


def test_operators_see_a_labelled_postmortem_form(client_as: ClientAs) -> None:
    incident = _incident()
    page = client_as("operator").get(f"/incidents/{incident.pk}/").content.decode()
    for name, label in (
        ("impact", "Impact"),
        ("root_cause", "Root cause"),
        ("resolution", "Solution"),
        ("lessons", "Lesson"),
    ):
        assert f'<label for="pm-{name}">{label}</label>' in page


def test_viewers_see_no_actions_and_their_forged_posts_are_refused(client_as: ClientAs) -> None:
    incident = _incident()
    client = client_as("viewer")
    page = client.get(f"/incidents/{incident.pk}/").content.decode()
    assert "/acknowledge/" not in page
    assert "Add comment" not in page
    assert "No postmortem written yet" in page
    for action, body in (
        ("acknowledge", {}),
        ("resolve", {}),
        ("comment", {"comment": "x"}),
        ("postmortem", {"impact": "x"}),
    ):
        assert client.post(f"/incidents/{incident.pk}/{action}/", body).status_code == 403
    incident.refresh_from_db()
    assert incident.status == "open"
    assert incident.impact == ""
    assert not AuditEvent.objects.filter(action="incident_update").exists()


def test_durations_read_as_the_two_largest_units() -> None:
    assert duration_text(45) == "45s"
    assert duration_text(725) == "12m 05s"
    assert duration_text(3 * 3600 + 7 * 60) == "3h 07m"
    assert duration_text(2 * 86_400 + 4 * 3600) == "2d 04h"


def test_every_incident_class_is_named_and_the_list_filters_by_kind(client_as: ClientAs) -> None:
    _incident(
        "Budget exhausted: daily global budget ($10.00)",
        kind="budget_exhausted",
        severity="critical",
    )
    _incident("Upstream quota exhausted: deployment 3", kind="upstream_quota")
    _incident("BreakwaterDrainerLag", kind="alert")
    client = client_as("viewer")
    page = client.get("/incidents/").content.decode()
    assert '<label for="f-kind">Kind</label>' in page
    for label in (
        "Budget exhausted",
        "Upstream quota exhausted",
        "Alertmanager alert",
        "Config reload failed",
        "Budget forecast over its limit",
    ):
        assert f">{label}</option>" in page, label
    page = client.get("/incidents/?kind=upstream_quota").content.decode()
    assert "Upstream quota exhausted: deployment 3" in page
    assert "BreakwaterDrainerLag" not in page
    assert client.get("/incidents/?kind=nonsense").status_code == 400


def test_a_timeline_entry_shows_its_figures(client_as: ClientAs) -> None:
    incident, _ = incident_open(
        kind="budget_exhausted",
        dedup_key="budget:1:exhausted",
        title="Budget exhausted: daily global budget ($10.00)",
        message="$10.00 of $10.00 used",
        data={"limit_usd": "10", "spent_usd": "10", "labels": {"agent": "support"}},
    )
    page = client_as("viewer").get(f"/incidents/{incident.pk}/").content.decode()
    assert 'Budget exhausted <span class="muted">budget_exhausted</span>' in page
    assert "<dt>limit_usd</dt><dd><code>10</code></dd>" in page
    assert "<dt>labels</dt><dd><code>{&quot;agent&quot;: &quot;support&quot;}</code></dd>" in page
