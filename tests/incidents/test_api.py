"""Incidents over the API: list and read with timelines, declare, acknowledge, resolve,
postmortem; every change on the timeline and in the audit trail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.selectors import cursor_encode
from core.models import AuditEvent
from incidents.models import Incident
from incidents.services import incident_open

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1}
agents:
  - {name: helper, model: m}
  - {name: other, model: m}
"""

pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class World:
    keys: dict[str, str]
    operator: str  # the operator key's actor name
    helper: int  # incident ids
    other: int
    deployment: int


def _open(key: str, agent: str, at: datetime) -> int:
    incident, _ = incident_open(
        kind="breaker_open",
        dedup_key=key,
        title=f"Circuit breaker open: {agent or 'deployment 1'}",
        message="breaker opened",
        agent_name=agent,
    )
    Incident.objects.filter(pk=incident.pk).update(opened_at=at)
    return incident.pk


def _setup() -> World:
    config_apply(document=config_parse(DOC))
    operator = api_key_create(name="op", scopes=["operate"])
    keys = {
        "operate": operator.plaintext,
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "helper-operator": api_key_create(
            name="hop", scopes=["operate"], agents=["helper"]
        ).plaintext,
    }
    return World(
        keys=keys,
        operator=f"apikey:{operator.api_key.prefix}",
        helper=_open("breaker:agent:helper", "helper", T0),
        other=_open("breaker:agent:other", "other", T0.replace(minute=1)),
        deployment=_open("breaker:deployment:1", "", T0.replace(minute=2)),
    )


@pytest.fixture
async def world() -> AsyncIterator[World]:
    yield await sync_to_async(_setup)()
    await engine_shutdown()


async def call(key: str, method: str, path: str, body: Any = None) -> Any:
    # Headers go on the request: AsyncClient(headers=...) defaults do not reach ASGI scopes.
    headers = {"Authorization": f"Bearer {key}"}
    client = AsyncClient()
    if method == "GET":
        return await client.get(path, headers=headers)
    return await getattr(client, method.lower())(
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def _error(response: Any, status: int, type_: str) -> str:
    assert response.status_code == status, response.content
    assert response.json()["error"]["type"] == type_
    return str(response.json()["error"]["message"])


async def _audits(incident_id: int) -> list[AuditEvent]:
    return await sync_to_async(
        lambda: list(
            AuditEvent.objects.filter(target_type="incident", target_id=str(incident_id))
            .exclude(action="incident_open")
            .order_by("id")
        )
    )()


# --- reading ---------------------------------------------------------------------------------


async def test_incidents_list_newest_first_with_their_timelines(world: World) -> None:
    response = await call(world.keys["read"], "GET", "/api/v1/incidents")
    assert response.status_code == 200
    body = response.json()
    assert [item["id"] for item in body["items"]] == [world.deployment, world.other, world.helper]
    assert body["next"] is None
    helper = body["items"][2]
    assert helper["agent"] == "helper"
    assert helper["status"] == "open"
    assert helper["kind"] == "breaker_open"
    assert [event["kind"] for event in helper["timeline"]] == ["opened"]
    assert body["items"][0]["agent"] is None


async def test_the_list_filters_by_status_and_agent(world: World) -> None:
    await call(
        world.keys["operate"], "PATCH", f"/api/v1/incidents/{world.other}", {"status": "resolved"}
    )
    open_ = (await call(world.keys["read"], "GET", "/api/v1/incidents?status=open")).json()
    assert [item["id"] for item in open_["items"]] == [world.deployment, world.helper]
    resolved = (await call(world.keys["read"], "GET", "/api/v1/incidents?status=resolved")).json()
    assert [item["id"] for item in resolved["items"]] == [world.other]
    helper = (await call(world.keys["read"], "GET", "/api/v1/incidents?agent=helper")).json()
    assert [item["id"] for item in helper["items"]] == [world.helper]


async def test_the_list_pages_through_its_cursor(world: World) -> None:
    seen: list[int] = []
    path = "/api/v1/incidents?limit=1"
    while True:
        body = (await call(world.keys["read"], "GET", path)).json()
        seen += [item["id"] for item in body["items"]]
        if body["next"] is None:
            break
        path = f"/api/v1/incidents?limit=1&after={body['next']}"
    assert seen == [world.deployment, world.other, world.helper]


@pytest.mark.parametrize(
    "query",
    [
        "status=panicking",
        "limit=0",
        "after=nonsense",
        f"after={cursor_encode(T0.isoformat(), 'x')}",
        f"after={cursor_encode('2026-03-01T12:00:00', '5')}",
    ],
)
async def test_bad_list_parameters_are_422(world: World, query: str) -> None:
    response = await call(world.keys["read"], "GET", f"/api/v1/incidents?{query}")
    _error(response, 422, "validation_error")


async def test_one_incident_reads_with_its_timeline(world: World) -> None:
    response = await call(world.keys["read"], "GET", f"/api/v1/incidents/{world.helper}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == world.helper
    assert body["title"] == "Circuit breaker open: helper"
    assert body["severity"] == "major"
    assert body["acknowledged_by"] == ""
    assert body["resolved_at"] is None
    assert {k: body[k] for k in ("impact", "root_cause", "resolution", "lessons")} == {
        "impact": "",
        "root_cause": "",
        "resolution": "",
        "lessons": "",
    }
    (event,) = body["timeline"]
    assert event["kind"] == "opened"
    assert event["message"] == "breaker opened"
    assert event["actor"] == "system"


async def test_an_unknown_incident_is_404(world: World) -> None:
    _error(await call(world.keys["read"], "GET", "/api/v1/incidents/999999"), 404, "not_found")


async def test_a_restricted_key_sees_only_its_agents_incidents(world: World) -> None:
    key = world.keys["helper-operator"]
    listed = (await call(key, "GET", "/api/v1/incidents")).json()
    assert [item["id"] for item in listed["items"]] == [world.helper]
    _error(await call(key, "GET", f"/api/v1/incidents/{world.other}"), 404, "not_found")
    _error(await call(key, "GET", f"/api/v1/incidents/{world.deployment}"), 404, "not_found")


async def test_reading_incidents_needs_read(world: World) -> None:
    _error(await call(world.keys["execute"], "GET", "/api/v1/incidents"), 403, "permission_denied")


# --- declaring -------------------------------------------------------------------------------


async def test_an_operator_declares_an_incident(world: World) -> None:
    body = {
        "title": "Answers are wrong",
        "severity": "critical",
        "agent": "helper",
        "message": "see #42",
    }
    response = await call(world.keys["operate"], "POST", "/api/v1/incidents", body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["kind"] == "manual"
    assert created["status"] == "open"
    assert created["severity"] == "critical"
    assert created["agent"] == "helper"
    (event,) = created["timeline"]
    assert (event["kind"], event["message"], event["actor"]) == (
        "opened",
        "see #42",
        world.operator,
    )
    audit = await sync_to_async(AuditEvent.objects.get)(
        action="incident_open", target_id=str(created["id"])
    )
    assert audit.actor == world.operator
    again = await call(world.keys["operate"], "POST", "/api/v1/incidents", body)
    assert again.json()["id"] != created["id"]  # declared incidents never merge


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "title"),
        ({"title": ""}, "title"),
        ({"title": "x", "severity": "apocalyptic"}, "severity"),
        ({"title": "x", "colour": "red"}, "colour"),
        ({"title": "x", "agent": "ghost"}, "agent: unknown agent 'ghost'"),
    ],
)
async def test_a_bad_declaration_is_422(world: World, body: dict[str, Any], fragment: str) -> None:
    response = await call(world.keys["operate"], "POST", "/api/v1/incidents", body)
    assert fragment in _error(response, 422, "validation_error")


async def test_a_restricted_key_declares_only_about_its_agents(world: World) -> None:
    key = world.keys["helper-operator"]
    ok = await call(key, "POST", "/api/v1/incidents", {"title": "x", "agent": "helper"})
    assert ok.status_code == 201
    hidden = await call(key, "POST", "/api/v1/incidents", {"title": "x", "agent": "other"})
    assert "unknown agent 'other'" in _error(hidden, 422, "validation_error")
    _error(await call(key, "POST", "/api/v1/incidents", {"title": "x"}), 403, "permission_denied")


async def test_declaring_needs_operate(world: World) -> None:
    response = await call(world.keys["read"], "POST", "/api/v1/incidents", {"title": "x"})
    _error(response, 403, "permission_denied")


# --- changing --------------------------------------------------------------------------------


async def test_acknowledging_records_who_and_when(world: World) -> None:
    path = f"/api/v1/incidents/{world.helper}"
    response = await call(world.keys["operate"], "PATCH", path, {"status": "acknowledged"})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "acknowledged"
    assert body["acknowledged_by"] == world.operator
    assert body["acknowledged_at"] is not None
    event = body["timeline"][-1]
    assert (event["kind"], event["actor"]) == ("acknowledged", world.operator)
    (audit,) = await _audits(world.helper)
    assert audit.action == "incident_update"
    assert audit.actor == world.operator
    assert audit.before == {"status": "open"}
    assert audit.after == {"status": "acknowledged"}


async def test_resolving_is_final_and_idempotent(world: World) -> None:
    path = f"/api/v1/incidents/{world.helper}"
    await call(world.keys["operate"], "PATCH", path, {"status": "acknowledged"})
    resolved = await call(world.keys["operate"], "PATCH", path, {"status": "resolved"})
    assert resolved.json()["status"] == "resolved"
    assert resolved.json()["resolved_at"] is not None
    again = await call(world.keys["operate"], "PATCH", path, {"status": "resolved"})
    assert again.status_code == 200
    assert [e["kind"] for e in again.json()["timeline"]] == ["opened", "acknowledged", "resolved"]
    conflict = await call(world.keys["operate"], "PATCH", path, {"status": "acknowledged"})
    assert "resolved" in _error(conflict, 409, "conflict")
    assert len(await _audits(world.helper)) == 2


async def test_the_postmortem_and_comments_go_on_the_timeline(world: World) -> None:
    path = f"/api/v1/incidents/{world.helper}"
    postmortem = {
        "impact": "12 minutes of fallback answers",
        "root_cause": "upstream quota",
        "resolution": "raised the quota",
        "lessons": "alert on quota at 80%",
        "severity": "critical",
        "comment": "closing the loop",
    }
    response = await call(world.keys["operate"], "PATCH", path, postmortem)
    assert response.status_code == 200
    body = response.json()
    for field in ("impact", "root_cause", "resolution", "lessons", "severity"):
        assert body[field] == postmortem[field]
    timeline = [(e["kind"], e["message"]) for e in body["timeline"]][1:]
    assert timeline == [
        ("severity", "severity major -> critical"),
        ("postmortem", "postmortem: impact, root_cause, resolution, lessons updated"),
        ("comment", "closing the loop"),
    ]
    (audit,) = await _audits(world.helper)
    assert audit.after is not None
    assert audit.after["root_cause"] == "upstream quota"
    assert audit.before is not None
    assert audit.before["root_cause"] == ""


async def test_a_change_to_the_same_values_writes_nothing(world: World) -> None:
    path = f"/api/v1/incidents/{world.helper}"
    response = await call(world.keys["operate"], "PATCH", path, {"severity": "major", "impact": ""})
    assert response.status_code == 200
    assert len(response.json()["timeline"]) == 1
    assert await _audits(world.helper) == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "nothing to change"),
        ({"status": "open"}, "status"),
        ({"owner": "me"}, "owner"),
        ({"comment": ""}, "comment"),
    ],
)
async def test_a_bad_change_is_422(world: World, body: dict[str, Any], fragment: str) -> None:
    response = await call(world.keys["operate"], "PATCH", f"/api/v1/incidents/{world.helper}", body)
    assert fragment in _error(response, 422, "validation_error")


async def test_changing_needs_operate_and_a_visible_incident(world: World) -> None:
    ack = {"status": "acknowledged"}
    path = f"/api/v1/incidents/{world.other}"
    _error(await call(world.keys["read"], "PATCH", path, ack), 403, "permission_denied")
    _error(await call(world.keys["helper-operator"], "PATCH", path, ack), 404, "not_found")
    missing = "/api/v1/incidents/999999"
    _error(await call(world.keys["operate"], "PATCH", missing, ack), 404, "not_found")
    own = f"/api/v1/incidents/{world.helper}"
    assert (await call(world.keys["helper-operator"], "PATCH", own, ack)).status_code == 200
