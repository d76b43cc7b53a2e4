"""GET /api/v1/audit: the audit trail over the API (admin scope, unrestricted key), through
``console.asgi.application`` as a client sees it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from agents.access.services import api_key_create
from agents.engine import engine_shutdown
from agents.models import Agent
from console.audit_trail import audit_diff
from core.audit import audit_record

pytestmark = pytest.mark.django_db(transaction=True)

FIELDS = {
    "at",
    "actor",
    "action",
    "target_type",
    "target_id",
    "before",
    "after",
    "reason",
    "request_id",
}


KEYS: dict[str, str] = {}  # persona -> key, made before the engine loads its config


def _keys() -> dict[str, str]:
    Agent.objects.create(name="support", model="m")
    made = {scope: api_key_create(name=scope, scopes=[scope]) for scope in SCOPES}
    made["restricted"] = api_key_create(name="r", scopes=["admin"], agents=["support"])
    return {persona: created.plaintext for persona, created in made.items()}


SCOPES = ("admin", "operate", "read", "execute")


@pytest.fixture
async def engine(settings: Any, tmp_path: Path) -> AsyncIterator[None]:
    settings.VAR_DIR = tmp_path
    KEYS.clear()
    KEYS.update(await sync_to_async(_keys)())
    yield
    await engine_shutdown()


async def _get(path: str, persona: str = "admin") -> Any:
    from console.asgi import application
    from tests.asgi_client import asgi_request

    headers = [("Authorization", f"Bearer {KEYS[persona]}")]
    return await asgi_request(application, "GET", path, headers=headers, body=b"")


async def _record(**fields: Any) -> None:
    await sync_to_async(audit_record)(**fields)


async def test_items_carry_the_contract_fields_newest_first(engine: None) -> None:
    await _record(actor="user:a", action="one", target_type="agent", target_id="x")
    await _record(
        actor="user:b",
        action="two",
        target_type="apikey",
        target_id="bw_1",
        before={"revoked_at": None},
        after={"revoked_at": "now"},
        reason="leaked",
        request_id="r-1",
    )
    body = (await _get("/api/v1/audit?actor=user:b")).json()
    assert body["next"] is None
    (item,) = body["items"]
    assert set(item) == FIELDS
    assert item["action"] == "two"
    assert item["reason"] == "leaked"
    assert item["request_id"] == "r-1"
    assert item["after"] == {"revoked_at": "now"}
    actions = [i["action"] for i in (await _get("/api/v1/audit")).json()["items"]]
    assert actions.index("two") < actions.index("one")


async def test_the_action_filter_and_cursor_walk_the_whole_trail_once(engine: None) -> None:
    for number in range(7):
        await _record(actor="user:a", action="walk", target_type="t", target_id=str(number))
    seen: list[str] = []
    after = ""
    for _ in range(10):
        body = (await _get(f"/api/v1/audit?action=walk&limit=3{after}")).json()
        seen += [item["target_id"] for item in body["items"]]
        if body["next"] is None:
            break
        after = f"&after={body['next']}"
    assert seen == [str(n) for n in range(6, -1, -1)]


async def test_a_bad_cursor_is_422_naming_it(engine: None) -> None:
    response = await _get("/api/v1/audit?after=not-a-cursor")
    assert response.status_code == 422
    assert response.json()["error"]["message"] == "after: invalid cursor"


@pytest.mark.parametrize("scope", ["read", "operate", "execute"])
async def test_keys_without_admin_scope_are_refused(engine: None, scope: str) -> None:
    assert (await _get("/api/v1/audit", scope)).status_code == 403


async def test_a_key_restricted_to_some_agents_is_refused_even_with_admin_scope(
    engine: None,
) -> None:
    response = await _get("/api/v1/audit", "restricted")
    assert response.status_code == 403
    assert "restricted" in response.json()["error"]["message"]


async def test_the_openapi_document_describes_it(engine: None) -> None:
    schema = (await _get("/api/v1/openapi.json")).json()
    operation = schema["paths"]["/api/v1/audit"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"actor", "action", "after"}
    assert "200" in operation["responses"]


def test_the_diff_names_changed_added_and_removed_keys_only() -> None:
    assert audit_diff({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 5, "d": 4}) == [
        {"key": "b", "before": 2, "after": 5, "change": "changed"},
        {"key": "c", "before": 3, "after": None, "change": "removed"},
        {"key": "d", "before": None, "after": 4, "change": "added"},
    ]
    assert audit_diff(None, {"a": 1}) == [
        {"key": "", "before": None, "after": {"a": 1}, "change": "changed"}
    ]
    assert audit_diff(None, None) == []
