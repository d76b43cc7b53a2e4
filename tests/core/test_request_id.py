"""Every request has an id (``X-Request-ID``, the client's when it is sane), and an operator's
write names it in the audit: through the REST API, the console's admin, whichever door."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import connections
from django.test import Client

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from budgets.models import Budget
from core.audit import audit_record
from core.models import AuditEvent
from core.request_id import bind, current_request_id, request_id_from, unbind
from tests.asgi_client import Answer, asgi_request

GENERATED = re.compile(r"[0-9a-f]{32}")

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, daily_budget_usd: 10}
"""


@pytest.mark.parametrize("value", ["req-123", "A.b:c_d-9", "x" * 64])
def test_a_sane_inbound_id_is_kept(value: str) -> None:
    assert request_id_from(value) == value


@pytest.mark.parametrize("value", [None, "", "x" * 65, "a b", "a,b", "a;b", "é", "a\nb", "a/b"])
def test_anything_else_is_replaced_by_a_new_id(value: str | None) -> None:
    made = request_id_from(value)
    assert GENERATED.fullmatch(made)
    assert made != request_id_from(value)


@pytest.mark.django_db
def test_audit_record_names_the_request_being_handled() -> None:
    def record(**kwargs: Any) -> AuditEvent:
        return audit_record(
            actor="user:a", action="agent_update", target_type="agent", target_id="x", **kwargs
        )

    assert record().request_id == ""  # outside a request (a job, a command)
    token = bind("req-42")
    try:
        assert record().request_id == "req-42"
        assert record(request_id="given").request_id == "given"  # a caller's own wins
    finally:
        unbind(token)
    assert current_request_id() == ""


# --- operator writes --------------------------------------------------------------------------


@pytest.fixture
async def operator(settings: Any, tmp_path: Path) -> AsyncIterator[str]:
    settings.VAR_DIR = tmp_path

    def setup() -> str:
        config_apply(document=config_parse(DOC))
        return api_key_create(name="ops", scopes=["operate"]).plaintext

    key = await sync_to_async(setup)()
    await sync_to_async(get_engine().config.reload)()
    yield key
    await engine_shutdown()
    await sync_to_async(connections.close_all)()


async def _served(method: str, path: str, key: str, body: bytes, *extra: tuple[str, str]) -> Answer:
    """Through the application as ``serve`` runs it (these routes are Django's)."""
    from console.asgi import application

    headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json"), *extra]
    return await asgi_request(application, method, path, headers=headers, body=body)


async def _last_event(action: str) -> AuditEvent:
    return await AuditEvent.objects.filter(action=action).order_by("-id").afirst()  # type: ignore[return-value]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("inbound", [None, "ticket-7:retry.2"])
async def test_a_breaker_command_through_the_api_is_audited_with_the_answers_request_id(
    operator: str, inbound: str | None
) -> None:
    extra = [] if inbound is None else [("X-Request-ID", inbound)]
    answer = await _served(
        "POST", "/api/v1/agents/helper/breaker", operator, b'{"action": "reset"}', *extra
    )
    assert answer.status_code == 200, answer.content
    request_id = answer["X-Request-ID"]
    assert request_id == inbound if inbound else GENERATED.fullmatch(request_id)
    event = await _last_event("breaker_reset")
    assert event.request_id == request_id


@pytest.mark.django_db(transaction=True)
async def test_a_budget_pause_through_the_api_is_audited_with_the_answers_request_id(
    operator: str,
) -> None:
    budget = await Budget.objects.afirst()
    assert budget is not None
    answer = await _served(
        "PATCH",
        f"/api/v1/budgets/{budget.pk}",
        operator,
        b'{"paused": true}',
        ("X-Request-ID", "bad id"),
    )
    assert answer.status_code == 200, answer.content
    assert GENERATED.fullmatch(answer["X-Request-ID"])  # "bad id" is not echoed
    event = await _last_event("budget_pause")
    assert event.request_id == answer["X-Request-ID"]


@pytest.mark.django_db
def test_a_revocation_in_the_admin_is_audited_with_the_answers_request_id(client: Client) -> None:
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "a-long-pass-1"))
    key = api_key_create(name="leak", scopes=["read"]).api_key
    response = client.post(
        "/admin/agents/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
        headers={"X-Request-ID": "change-1234"},
    )
    assert response.status_code == 302
    assert response["X-Request-ID"] == "change-1234"
    assert AuditEvent.objects.get(action="apikey_revoke").request_id == "change-1234"
