"""Alertmanager's webhook lands alerts in the incident list: opened, updated, resolved, and
Alertmanager's repeats change nothing."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from incidents.alertmanager import alert_severity
from incidents.models import Incident, IncidentEvent
from incidents.services import incident_open, incident_resolve_by_key

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m}
  - {name: other, model: m}
budgets:
  - {scope: global, daily_limit_usd: 10, monthly_limit_usd: 100}
"""
PATH = "/api/v1/alerts/alertmanager"
FIRING_SINCE = "2026-03-01T12:00:05.123456789Z"  # Go's time format: nanoseconds

# The shape of https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
BREAKER: dict[str, Any] = {
    "status": "firing",
    "labels": {
        "alertname": "BreakwaterAgentBreakerOpen",
        "agent": "helper",
        "instance": "127.0.0.1:8000",
        "job": "breakwater",
        "severity": "critical",
    },
    "annotations": {
        "summary": "Circuit breaker open for agent helper",
        "description": 'agent_circuit_breaker_state{agent="helper"} has been 2 for 10s.',
        "runbook_url": "https://example.com/docs/OPERATIONS.md#breaker-open",
    },
    "startsAt": FIRING_SINCE,
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus:9090/graph?g0.expr=agent_circuit_breaker_state+%3D%3D+2",
    "fingerprint": "b5a0e1d9c3f27a61",
}
LAG: dict[str, Any] = {
    "status": "firing",
    "labels": {"alertname": "BreakwaterDrainerLag", "job": "breakwater", "severity": "warning"},
    "annotations": {"description": "executions wait 45s for the database"},
    "startsAt": "2026-03-01T12:01:00Z",
    "endsAt": "0001-01-01T00:00:00Z",
    "generatorURL": "http://prometheus:9090/graph?g0.expr=breakwater_drain_lag_seconds",
    "fingerprint": "0f3c2a1b9d8e7f60",
}


def notification(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {
        "receiver": "breakwater",
        "status": status,
        "alerts": list(alerts),
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": {"job": "breakwater"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "version": "4",
        "groupKey": '{}:{alertname="' + alerts[0]["labels"]["alertname"] + '"}',
        "truncatedAlerts": 0,
    }


def resolved(alert: dict[str, Any], ends: str = "2026-03-01T12:09:35Z") -> dict[str, Any]:
    return {**copy.deepcopy(alert), "status": "resolved", "endsAt": ends}


@pytest.fixture
async def keys() -> AsyncIterator[dict[str, str]]:
    def setup() -> dict[str, str]:
        config_apply(document=config_parse(DOC))
        return {
            "operate": api_key_create(name="am", scopes=["operate"]).plaintext,
            "read": api_key_create(name="read", scopes=["read"]).plaintext,
            "helper": api_key_create(name="hop", scopes=["operate"], agents=["helper"]).plaintext,
        }

    yield await sync_to_async(setup)()
    await engine_shutdown()


async def post(key: str, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await AsyncClient().post(
        PATH, data=raw, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )


def _incidents() -> list[tuple[Incident, list[IncidentEvent]]]:
    return [(i, list(i.events.all())) for i in Incident.objects.order_by("id")]


async def test_a_firing_alert_opens_an_incident_with_its_labels_and_annotations(
    keys: dict[str, str],
) -> None:
    response = await post(keys["operate"], notification(BREAKER))

    assert response.status_code == 200, response.content
    ((incident, timeline),) = await sync_to_async(_incidents)()
    assert response.json() == {
        "opened": [incident.pk],
        "updated": [],
        "resolved": [],
        "attached": [],
        "unchanged": 0,
    }
    assert incident.kind == "alert"
    assert incident.dedup_key == "alertmanager:BreakwaterAgentBreakerOpen:b5a0e1d9c3f27a61"
    assert incident.title == "Circuit breaker open for agent helper"
    assert incident.severity == "critical"
    assert incident.agent_name == "helper"
    (opened,) = timeline
    assert opened.message == (
        "BreakwaterAgentBreakerOpen firing since 2026-03-01T12:00:05.123456+00:00: "
        'agent_circuit_breaker_state{agent="helper"} has been 2 for 10s.'
    )
    assert opened.data["labels"] == BREAKER["labels"]
    assert opened.data["annotations"] == BREAKER["annotations"]
    assert opened.data["startsAt"] == "2026-03-01T12:00:05.123456+00:00"
    assert opened.data["endsAt"] is None
    assert opened.data["generatorURL"] == BREAKER["generatorURL"]
    assert opened.data["receiver"] == "breakwater"
    # It is in the incident list like any other.
    listed = await AsyncClient().get(
        "/api/v1/incidents?kind=alert", headers={"Authorization": f"Bearer {keys['read']}"}
    )
    assert [item["id"] for item in listed.json()["items"]] == [incident.pk]


async def test_alertmanagers_repeats_add_nothing_and_a_changed_alert_adds_one_entry(
    keys: dict[str, str],
) -> None:
    await post(keys["operate"], notification(BREAKER))
    for _ in range(3):  # repeat_interval, or the group sent again for another alert's change
        again = await post(keys["operate"], notification(BREAKER))
        assert again.json()["unchanged"] == 1
    changed = copy.deepcopy(BREAKER)
    changed["annotations"]["description"] = "agent_circuit_breaker_state has been 2 for 5m."

    response = await post(keys["operate"], notification(changed))

    ((incident, timeline),) = await sync_to_async(_incidents)()
    assert response.json()["updated"] == [incident.pk]
    assert [e.kind for e in timeline] == ["opened", "updated"]
    assert timeline[1].data["annotations"]["description"].endswith("for 5m.")
    assert (await post(keys["operate"], notification(changed))).json()["unchanged"] == 1


async def test_a_resolved_alert_resolves_its_incident_and_its_repeats_change_nothing(
    keys: dict[str, str],
) -> None:
    await post(keys["operate"], notification(BREAKER, LAG))

    response = await post(keys["operate"], notification(resolved(BREAKER), LAG))
    again = await post(keys["operate"], notification(resolved(BREAKER), status="resolved"))

    (breaker, breaker_timeline), (lag, _) = await sync_to_async(_incidents)()
    assert response.json() == {
        "opened": [],
        "updated": [],
        "resolved": [breaker.pk],
        "attached": [],
        "unchanged": 1,
    }
    assert again.json()["unchanged"] == 1
    assert breaker.status == "resolved"
    assert [e.kind for e in breaker_timeline] == ["opened", "resolved"]
    assert breaker_timeline[1].message == (
        "BreakwaterAgentBreakerOpen resolved in Alertmanager (ended 2026-03-01T12:09:35+00:00)"
    )
    assert lag.status == "open"
    assert lag.severity == "major"  # warning
    assert lag.title == "BreakwaterDrainerLag"  # no summary: the alert's name
    assert lag.agent_name == ""


async def test_a_late_firing_repeat_of_a_resolved_episode_does_not_reopen_it(
    keys: dict[str, str],
) -> None:
    await post(keys["operate"], notification(BREAKER))
    await post(keys["operate"], notification(resolved(BREAKER), status="resolved"))

    await post(keys["operate"], notification(BREAKER))  # delivered late, same startsAt
    assert await sync_to_async(Incident.objects.count)() == 1

    next_time = {**BREAKER, "startsAt": "2026-03-01T14:00:00Z"}
    response = await post(keys["operate"], notification(next_time))
    assert len(response.json()["opened"]) == 1
    assert await sync_to_async(Incident.objects.filter(status="open").count)() == 1


async def test_a_resolved_notification_of_an_earlier_episode_leaves_the_open_one_alone(
    keys: dict[str, str],
) -> None:
    later = {**BREAKER, "startsAt": "2026-03-01T14:00:00Z"}
    await post(keys["operate"], notification(later))
    response = await post(keys["operate"], notification(resolved(BREAKER), status="resolved"))
    assert response.json()["unchanged"] == 1
    assert await sync_to_async(Incident.objects.get)(status="open")


async def test_an_alert_about_an_unknown_agent_is_deployment_wide(keys: dict[str, str]) -> None:
    ghost = copy.deepcopy(BREAKER)
    ghost["labels"]["agent"] = "ghost"
    ghost["fingerprint"] = "1111111111111111"
    await post(keys["operate"], notification(ghost))
    incident = await sync_to_async(Incident.objects.get)()
    assert incident.agent_name == ""


async def test_a_key_restricted_to_some_agents_may_only_send_alerts_about_them(
    keys: dict[str, str],
) -> None:
    response = await post(keys["helper"], notification(BREAKER, LAG))
    assert response.status_code == 403
    assert response.json()["error"]["message"].startswith(
        "alerts[1] (BreakwaterDrainerLag) is about no agent (labels.agent is missing)"
    )
    assert not await sync_to_async(Incident.objects.exists)()  # all or nothing

    assert (await post(keys["helper"], notification(BREAKER))).status_code == 200
    assert (await post(keys["read"], notification(BREAKER))).status_code == 403


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"version": "3"}, "version: Input should be '4'", id="version"),
        pytest.param({"alerts": []}, "alerts: List should have at least 1 item", id="no-alerts"),
        pytest.param(
            {"status": "pending"}, "status: Input should be 'firing' or 'resolved'", id="status"
        ),
        pytest.param(
            {"alerts": [{**LAG, "labels": {"job": "x"}}]},
            "alerts.0.labels: Value error, must hold a non-empty 'alertname'",
            id="no-alertname",
        ),
        pytest.param(
            {"alerts": [{**LAG, "startsAt": "yesterday"}]}, "alerts.0.startsAt: ", id="bad-time"
        ),
        pytest.param(
            {"alerts": [{**LAG, "fingerprint": "../x"}]},
            "alerts.0.fingerprint: String should match pattern",
            id="fingerprint",
        ),
        pytest.param(
            {"alerts": [LAG] * 1001}, "alerts: List should have at most 1000 items", id="too-many"
        ),
        pytest.param(
            {"alerts": [{**LAG, "annotations": {"description": "x" * 8193}}]},
            "alerts.0.annotations: Value error, annotations 'description': at most 8192",
            id="huge-annotation",
        ),
    ],
)
async def test_a_malformed_notification_is_a_422_naming_what_is_wrong(
    keys: dict[str, str], change: dict[str, Any], message: str
) -> None:
    response = await post(keys["operate"], {**notification(LAG), **change})
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "validation_error"
    assert message in response.json()["error"]["message"]
    assert not await sync_to_async(Incident.objects.exists)()


async def test_a_notification_over_the_body_limit_is_refused(keys: dict[str, str]) -> None:
    from django.conf import settings

    big = notification(LAG)
    big["commonAnnotations"] = {"padding": "x" * settings.DATA_UPLOAD_MAX_MEMORY_SIZE}
    response = await post(keys["operate"], big)
    assert response.status_code == 413


@pytest.mark.parametrize(
    ("label", "severity"),
    [
        ("critical", "critical"),
        ("page", "critical"),
        ("warning", "major"),
        ("error", "major"),
        ("info", "minor"),
        ("Minor", "minor"),
        ("", "major"),
        ("whatever", "major"),
    ],
)
def test_the_severity_label_maps_to_an_incident_severity(label: str, severity: str) -> None:
    assert alert_severity({"severity": label} if label else {}) == severity


def mirroring(alert: dict[str, Any], incident_key: str) -> dict[str, Any]:
    """``alert`` as the shipped rules send it when Breakwater has an incident class of its own
    for it: its ``breakwater_incident`` label names that incident."""
    out = copy.deepcopy(alert)
    out["labels"]["breakwater_incident"] = incident_key
    return out


def _own_breaker_incident(agent: str = "helper") -> Incident:
    """The incident Breakwater opens itself when ``agent``'s breaker opens."""
    incident, _ = incident_open(
        kind="breaker_open",
        dedup_key=f"breaker:agent:{agent}",
        title=f"Circuit breaker open: agent {agent}",
        message="breaker opened (2 failures)",
        severity="critical",
        agent_name=agent,
    )
    return incident


async def test_an_alert_about_an_open_breakwater_incident_joins_its_timeline_instead_of_a_second(
    keys: dict[str, str],
) -> None:
    own = await sync_to_async(_own_breaker_incident)()
    alert = mirroring(BREAKER, "breaker:agent:helper")

    first = await post(keys["operate"], notification(alert))
    repeats = [await post(keys["operate"], notification(alert)) for _ in range(3)]
    ended = await post(keys["operate"], notification(resolved(alert), status="resolved"))
    again = await post(keys["operate"], notification(resolved(alert), status="resolved"))

    assert first.json() == {
        "opened": [],
        "updated": [],
        "resolved": [],
        "attached": [own.pk],
        "unchanged": 0,
    }
    assert [r.json()["unchanged"] for r in repeats] == [1, 1, 1]
    assert ended.json()["attached"] == [own.pk]
    assert again.json()["unchanged"] == 1
    ((incident, timeline),) = await sync_to_async(_incidents)()  # no second incident
    assert incident.pk == own.pk
    assert [e.kind for e in timeline] == ["opened", "alert", "alert_resolved"]
    assert timeline[1].message.startswith(
        "BreakwaterAgentBreakerOpen firing in Prometheus since 2026-03-01T12:00:05.123456+00:00"
    )
    assert timeline[1].data["fingerprint"] == BREAKER["fingerprint"]
    # Breakwater's detector owns the incident: the alert's end does not resolve it.
    assert incident.status == "open"


async def test_a_key_restricted_to_some_agents_cannot_write_on_another_agents_incident(
    keys: dict[str, str],
) -> None:
    theirs = await sync_to_async(_own_breaker_incident)("other")
    alert = mirroring(BREAKER, "breaker:agent:other")  # labels.agent is helper: allowed

    response = await post(keys["helper"], notification(alert))

    assert response.json()["attached"] == []
    assert len(response.json()["opened"]) == 1  # an alert incident of helper's own
    timeline = await sync_to_async(lambda: [e.kind for e in theirs.events.all()])()
    assert timeline == ["opened"]


async def test_a_repeat_after_breakwater_resolved_its_incident_opens_nothing(
    keys: dict[str, str],
) -> None:
    await sync_to_async(_own_breaker_incident)()
    alert = mirroring(BREAKER, "breaker:agent:helper")
    await post(keys["operate"], notification(alert))
    # The breaker closes: Breakwater resolves at once; Prometheus still fires for a scrape or two.
    await sync_to_async(incident_resolve_by_key)(
        dedup_key="breaker:agent:helper", message="breaker closed"
    )

    repeat = await post(keys["operate"], notification(alert))
    ended = await post(keys["operate"], notification(resolved(alert), status="resolved"))

    assert repeat.json()["unchanged"] == 1
    assert ended.json()["unchanged"] == 1
    ((incident, timeline),) = await sync_to_async(_incidents)()
    assert incident.status == "resolved"
    assert [e.kind for e in timeline] == ["opened", "alert", "resolved"]


async def test_an_alert_naming_no_open_breakwater_incident_opens_its_own(
    keys: dict[str, str],
) -> None:
    response = await post(keys["operate"], notification(mirroring(BREAKER, "breaker:agent:helper")))

    ((incident, _),) = await sync_to_async(_incidents)()
    assert response.json()["opened"] == [incident.pk]
    assert incident.kind == "alert"


async def test_a_budget_alert_finds_the_budgets_incident_by_its_scope_label(
    keys: dict[str, str],
) -> None:
    from budgets.incidents import exhausted_key
    from budgets.models import Budget

    def own() -> Incident:
        monthly = Budget.objects.get(window="monthly")
        incident, _ = incident_open(
            kind="budget_exhausted",
            dedup_key=exhausted_key(monthly.pk),
            title="Budget global:monthly exhausted",
            message="100.00 of 100.00 USD spent",
            severity="critical",
        )
        return incident

    incident = await sync_to_async(own)()
    alert = mirroring(LAG, "budget:global:monthly:exhausted")
    alert["labels"].update(alertname="BudgetExhausted", scope="global:monthly")
    daily = mirroring(LAG, "budget:global:exhausted")  # no incident for the daily budget
    daily["labels"].update(alertname="BudgetExhausted", scope="global")
    daily["fingerprint"] = "1111222233334444"

    response = await post(keys["operate"], notification(alert, daily))

    assert response.json()["attached"] == [incident.pk]
    assert len(response.json()["opened"]) == 1
    assert await sync_to_async(Incident.objects.filter(kind="alert").count)() == 1
