"""Agent configs over the API: the fields and rules of config as code, audited writes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from agents.access.services import api_key_create
from agents.config.apply import ConfigError, config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.models import Agent, ApiKey, Execution
from budgets.models import Budget
from core.models import AuditEvent

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: m2, provider: sim, upstream_model: m-2, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: free, provider: sim, upstream_model: f-1}  # no price: usable only without a budget
agents:
  - name: helper
    model: m
    fallback_models: [m2]
    daily_budget_usd: 50
    breaker: {failure_threshold: 7, recovery_timeout_s: 30}
    fallback_messages: {timeout: "Slow today."}
  - {name: other, model: m}
"""

pytestmark = pytest.mark.django_db(transaction=True)


def _setup() -> dict[str, Any]:
    config_apply(document=config_parse(DOC))
    keys = {
        "admin": api_key_create(name="admin", scopes=["admin"]),
        "read": api_key_create(name="read", scopes=["read"]),
        "execute": api_key_create(name="exec", scopes=["execute"]),
        "helper-admin": api_key_create(name="ha", scopes=["admin"], agents=["helper"]),
    }
    return {name: created.plaintext for name, created in keys.items()} | {
        "admin-prefix": keys["admin"].api_key.prefix
    }


@pytest.fixture
async def keys(settings: Any, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    settings.VAR_DIR = tmp_path  # this test's own execution journal
    created = await sync_to_async(_setup)()
    yield created
    await engine_shutdown()


async def call(method: str, path: str, key: str | None, body: Any = None) -> Any:
    # Headers go on the request: AsyncClient(headers=...) defaults do not reach ASGI scopes.
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = AsyncClient()
    if method == "GET":
        return await client.get(path, headers=headers)
    if method == "DELETE":
        return await client.delete(path, headers=headers)
    data = body if isinstance(body, str) else json.dumps(body)
    return await getattr(client, method.lower())(
        path, data=data, content_type="application/json", headers=headers
    )


def _error(response: Any, status: int, type_: str) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == type_
    return str(body["error"]["message"])


async def _audit(action: str) -> list[AuditEvent]:
    """What API keys did (the set-up's ``apply`` is audited too, as ``system:apply``)."""
    return await sync_to_async(
        lambda: list(AuditEvent.objects.filter(action=action, actor__startswith="apikey:"))
    )()


# --- reading ---------------------------------------------------------------------------------


async def test_an_agent_reads_back_with_the_fields_of_config_as_code(
    keys: dict[str, str],
) -> None:
    response = await call("GET", "/api/v1/agents/helper", keys["read"])
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "helper"
    assert body["model"] == "m"
    assert body["fallback_models"] == ["m2"]
    assert body["daily_budget_usd"] == 50  # money is a JSON number
    assert body["breaker"]["failure_threshold"] == 7
    assert body["breaker"]["half_open_max_calls"] == 1  # defaults are spelled out
    assert body["rate_limit"] == {"rpm": None, "tpm": None}
    assert body["fallback_messages"] == {"timeout": "Slow today."}
    exported = await sync_to_async(_exported_agent)("helper")
    assert {k: v for k, v in body.items() if k in exported} == exported


def _exported_agent(name: str) -> dict[str, Any]:
    from agents.config.export import config_export

    return next(a for a in config_export()["agents"] if a["name"] == name)


async def test_the_list_is_a_page_of_agents_by_name(keys: dict[str, str]) -> None:
    response = await call("GET", "/api/v1/agents", keys["read"])
    assert response.status_code == 200
    body = response.json()
    assert [a["name"] for a in body["items"]] == ["helper", "other"]
    assert body["next"] is None


async def test_the_list_follows_its_cursor_page_by_page(keys: dict[str, str]) -> None:
    first = (await call("GET", "/api/v1/agents?limit=1", keys["read"])).json()
    assert [a["name"] for a in first["items"]] == ["helper"]
    assert first["next"]
    second = (
        await call("GET", f"/api/v1/agents?limit=1&after={first['next']}", keys["read"])
    ).json()
    assert [a["name"] for a in second["items"]] == ["other"]
    assert second["next"] is None


async def test_a_cursor_that_is_not_one_is_422(keys: dict[str, str]) -> None:
    response = await call("GET", "/api/v1/agents?after=%25%25nonsense", keys["read"])
    assert "after: invalid cursor" in _error(response, 422, "validation_error")


async def test_a_key_restricted_to_some_agents_sees_only_those(keys: dict[str, str]) -> None:
    listed = (await call("GET", "/api/v1/agents", keys["helper-admin"])).json()
    assert [a["name"] for a in listed["items"]] == ["helper"]
    _error(await call("GET", "/api/v1/agents/other", keys["helper-admin"]), 404, "not_found")


async def test_an_unknown_agent_is_404(keys: dict[str, str]) -> None:
    _error(await call("GET", "/api/v1/agents/ghost", keys["read"]), 404, "not_found")


async def test_reading_agents_needs_the_read_scope(keys: dict[str, str]) -> None:
    _error(await call("GET", "/api/v1/agents", keys["execute"]), 403, "permission_denied")
    _error(await call("GET", "/api/v1/agents", None), 401, "authentication_error")


# --- creating --------------------------------------------------------------------------------


async def test_an_admin_creates_an_agent_that_can_run_at_once(keys: dict[str, str]) -> None:
    body = {"name": "writer", "model": "m", "daily_budget_usd": 12.5, "max_tokens": 256}
    response = await call("POST", "/api/v1/agents", keys["admin"], body)
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["name"] == "writer"
    assert created["daily_budget_usd"] == 12.5
    assert created["timeout_s"] == 30  # the same defaults as a YAML entry
    budget = await sync_to_async(Budget.objects.get)(agent__name="writer")
    assert budget.scope == "agent"
    assert budget.window == "daily"
    assert budget.limit_usd == Decimal("12.5")
    (audit,) = await _audit("agent_create")
    assert audit.actor == f"apikey:{keys['admin-prefix']}"
    assert audit.after is not None
    assert audit.after["model"] == "m"
    assert len(await _audit("budget_create")) == 1

    run = await call("POST", "/api/v1/agents/writer/execute", keys["admin"], {"input": "hi"})
    assert run.status_code == 200
    assert run.json()["status"] == "succeeded"


async def test_creating_an_agent_whose_name_is_taken_is_409(keys: dict[str, str]) -> None:
    response = await call("POST", "/api/v1/agents", keys["admin"], {"name": "helper", "model": "m"})
    assert "already exists" in _error(response, 409, "conflict")


async def test_every_problem_is_reported_as_a_path_and_a_message(keys: dict[str, str]) -> None:
    body = {
        "name": "Not A Slug",
        "model": "m",
        "breaker": {"failure_threshold": 0},
        "colour": "red",
    }
    message = _error(
        await call("POST", "/api/v1/agents", keys["admin"], body), 422, "validation_error"
    )
    lines = message.split("; ")
    assert any(line.startswith("name: invalid format") for line in lines)
    assert "breaker.failure_threshold: must be >= 1" in lines
    assert "colour: unknown field" in lines
    assert await sync_to_async(Agent.objects.count)() == 2


@pytest.mark.parametrize(
    ("agent", "line"),
    [
        ({"name": "x", "model": "ghost"}, "model: unknown model 'ghost'"),
        ({"name": "x", "model": "m", "fallback_models": ["m2", "nope"]}, "fallback_models[1]"),
        ({"name": "x", "model": "m", "cheap_model": "m"}, "cheap_model: must differ from model"),
        (
            {
                "name": "x",
                "model": "m",
                "tools": [{"name": "t", "kind": "python", "function": "os:system"}],
            },
            "tools[0].function: 'os:system' is not in BREAKWATER_TOOL_ALLOW_LIST",
        ),
        (
            {"name": "x", "model": "free", "daily_budget_usd": 5},
            "model: model 'free' has no price (deployment ",
        ),
    ],
)
async def test_the_api_refuses_what_apply_refuses_with_the_same_message(
    keys: dict[str, str], agent: dict[str, Any], line: str
) -> None:
    message = _error(
        await call("POST", "/api/v1/agents", keys["admin"], agent), 422, "validation_error"
    )
    assert line in message
    with pytest.raises(ConfigError) as applied:
        await sync_to_async(config_apply)(document=config_parse(json.dumps({"agents": [agent]})))
    assert [e.removeprefix("agents[0].") for e in applied.value.errors] == message.split("; ")


async def test_a_body_that_is_not_an_object_is_refused(keys: dict[str, str]) -> None:
    response = await call("POST", "/api/v1/agents", keys["admin"], ["helper"])
    assert response.status_code in (400, 422)
    assert "error" in response.json()


async def test_only_an_unrestricted_admin_creates_agents(keys: dict[str, str]) -> None:
    body = {"name": "writer", "model": "m"}
    _error(await call("POST", "/api/v1/agents", keys["read"], body), 403, "permission_denied")
    message = _error(
        await call("POST", "/api/v1/agents", keys["helper-admin"], body), 403, "permission_denied"
    )
    assert "restricted" in message
    assert not await sync_to_async(Agent.objects.filter(name="writer").exists)()


# --- changing --------------------------------------------------------------------------------


async def test_a_patch_merges_into_the_agent_and_keeps_the_rest(keys: dict[str, str]) -> None:
    patch = {"breaker": {"failure_threshold": 3}, "fallback_messages": {"budget": "Later."}}
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], patch)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["breaker"]["failure_threshold"] == 3
    assert body["breaker"]["recovery_timeout_s"] == 30  # merged, not replaced
    assert body["fallback_messages"] == {"timeout": "Slow today.", "budget": "Later."}
    assert body["fallback_models"] == ["m2"]
    (audit,) = await _audit("agent_update")
    assert audit.before == {
        "breaker_failure_threshold": 7,
        "fallback_messages": {"timeout": "Slow today."},
    }
    assert audit.actor == f"apikey:{keys['admin-prefix']}"
    config = get_engine().config.agent("helper")
    assert config is not None
    assert config.breaker.failure_threshold == 3


async def test_a_patch_sets_and_removes_the_daily_budget(keys: dict[str, str]) -> None:
    changed = await call("PATCH", "/api/v1/agents/other", keys["admin"], {"daily_budget_usd": 9})
    assert changed.json()["daily_budget_usd"] == 9
    assert await sync_to_async(Budget.objects.filter(agent__name="other").count)() == 1
    removed = await call("PATCH", "/api/v1/agents/other", keys["admin"], {"daily_budget_usd": None})
    assert removed.json()["daily_budget_usd"] is None
    assert await sync_to_async(Budget.objects.filter(agent__name="other").count)() == 0
    assert len(await _audit("budget_delete")) == 1


async def test_a_patch_sets_and_clears_the_attempt_timeout_which_reaches_the_runtime(
    keys: dict[str, str],
) -> None:
    assert (await call("GET", "/api/v1/agents/helper", keys["read"])).json()[
        "attempt_timeout_s"
    ] is None
    patch = {"timeout_s": 10, "attempt_timeout_s": 4}
    changed = await call("PATCH", "/api/v1/agents/helper", keys["admin"], patch)
    assert changed.status_code == 200, changed.content
    assert changed.json()["attempt_timeout_s"] == 4
    config = get_engine().config.agent("helper")
    assert config is not None
    assert config.attempt_timeout_s == 4
    cleared = await call(
        "PATCH", "/api/v1/agents/helper", keys["admin"], {"attempt_timeout_s": None}
    )
    assert cleared.json()["attempt_timeout_s"] is None
    config = get_engine().config.agent("helper")
    assert config is not None
    assert config.attempt_timeout_s is None


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"attempt_timeout_s": 31}, "attempt_timeout_s: must be <= timeout_s (30), got 31"),
        ({"attempt_timeout_s": 1e-300}, "attempt_timeout_s: must be >= 0.1"),
        ({"attempt_timeout_s": True}, "attempt_timeout_s: must be a number"),
    ],
)
async def test_an_attempt_timeout_outside_the_deadline_or_too_small_is_refused(
    keys: dict[str, str], patch: dict[str, Any], expected: str
) -> None:
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], patch)
    assert _error(response, 422, "validation_error") == expected
    unchanged = await sync_to_async(Agent.objects.get)(name="helper")
    assert unchanged.attempt_timeout_s is None


async def test_an_agents_slo_reads_back_with_its_defaults_and_a_patch_merges_into_it(
    keys: dict[str, str],
) -> None:
    body = (await call("GET", "/api/v1/agents/helper", keys["read"])).json()
    assert body["slo"] == {"availability": 0.999, "latency_ms": 2000, "latency_quantile": 0.95}
    patch = {"slo": {"latency_ms": 800}}
    changed = await call("PATCH", "/api/v1/agents/helper", keys["admin"], patch)
    assert changed.status_code == 200, changed.content
    assert changed.json()["slo"] == {
        "availability": 0.999,
        "latency_ms": 800,
        "latency_quantile": 0.95,
    }
    stored = await sync_to_async(Agent.objects.get)(name="helper")
    assert (stored.slo_availability, stored.slo_latency_ms, stored.slo_latency_quantile) == (
        0.999,
        800,
        0.95,
    )
    assert (await sync_to_async(_exported_agent)("helper"))["slo"]["latency_ms"] == 800
    (audited,) = await _audit("agent_update")
    assert audited.before == {"slo_latency_ms": 2000}
    assert audited.after == {"slo_latency_ms": 800}
    restored = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"slo": None})
    assert restored.json()["slo"]["latency_ms"] == 2000


async def test_an_agent_created_with_an_slo_keeps_it_and_a_bad_one_is_named(
    keys: dict[str, str],
) -> None:
    slo = {"availability": 0.99, "latency_ms": 5000, "latency_quantile": 0.9}
    created = await call(
        "POST", "/api/v1/agents", keys["admin"], {"name": "batch", "model": "m", "slo": slo}
    )
    assert created.status_code == 201, created.content
    assert created.json()["slo"] == slo
    refused = await call(
        "POST",
        "/api/v1/agents",
        keys["admin"],
        {"name": "nines", "model": "m", "slo": {"availability": 1.0, "latency_ms": -1}},
    )
    assert _error(refused, 422, "validation_error") == (
        "slo.availability: must be <= 0.99999; slo.latency_ms: must be >= 1"
    )
    patched = await call(
        "PATCH", "/api/v1/agents/helper", keys["admin"], {"slo": {"latency_quantile": 0.1}}
    )
    assert _error(patched, 422, "validation_error") == "slo.latency_quantile: must be >= 0.5"


async def test_an_agents_queue_reads_back_as_default_and_a_patch_moves_it_to_a_pool(
    keys: dict[str, str],
) -> None:
    assert (await call("GET", "/api/v1/agents/helper", keys["read"])).json()["queue"] == "default"
    changed = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"queue": "heavy"})
    assert changed.status_code == 200, changed.content
    assert changed.json()["queue"] == "heavy"
    assert (await sync_to_async(Agent.objects.get)(name="helper")).queue == "heavy"
    assert (await sync_to_async(_exported_agent)("helper"))["queue"] == "heavy"
    (audited,) = await _audit("agent_update")
    assert (audited.before, audited.after) == ({"queue": "default"}, {"queue": "heavy"})
    refused = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"queue": "a,b"})
    assert _error(refused, 422, "validation_error") == (
        "queue: 'a,b' must be a Celery queue name: 1-64 letters, digits, '_', '-' or '.', "
        "starting with a letter or digit (no spaces, commas or colons) (agent helper)"
    )
    restored = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"queue": None})
    assert restored.json()["queue"] == "default"


async def test_an_agents_max_concurrency_is_unset_by_default_and_patched_within_range(
    keys: dict[str, str],
) -> None:
    body = (await call("GET", "/api/v1/agents/helper", keys["read"])).json()
    assert body["max_concurrency"] is None
    capped = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"max_concurrency": 8})
    assert capped.json()["max_concurrency"] == 8
    assert (await sync_to_async(Agent.objects.get)(name="helper")).max_concurrency == 8
    refused = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"max_concurrency": 0})
    assert _error(refused, 422, "validation_error") == "max_concurrency: must be >= 1"


def test_the_openapi_agent_shapes_carry_the_queue() -> None:
    from console.api import api

    schemas = api.get_openapi_schema()["components"]["schemas"]
    assert schemas["AgentOut"]["properties"]["queue"]["default"] == "default"
    queue = schemas["AgentIn"]["properties"]["queue"]
    assert (queue["type"], queue["maxLength"]) == ("string", 64)
    assert "BREAKWATER_EXECUTION_QUEUE" in queue["description"]


async def test_a_patch_that_changes_nothing_writes_nothing(keys: dict[str, str]) -> None:
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"model": "m"})
    assert response.status_code == 200
    assert await _audit("agent_update") == []


async def test_a_patch_is_validated_as_a_whole_agent(keys: dict[str, str]) -> None:
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"model": "m2"})
    message = _error(response, 422, "validation_error")
    assert message == "fallback_models: must not contain the agent's own model"
    unchanged = await sync_to_async(Agent.objects.get)(name="helper")
    assert unchanged.model == "m"


async def test_an_unpriced_model_is_refused_under_a_budget_and_allowed_without(
    keys: dict[str, str],
) -> None:
    created = await call("POST", "/api/v1/agents", keys["admin"], {"name": "x", "model": "free"})
    assert created.status_code == 201, created.content

    response = await call("PATCH", "/api/v1/agents/x", keys["admin"], {"daily_budget_usd": 5})
    message = _error(response, 422, "validation_error")

    assert message.startswith("model: model 'free' has no price (deployment ")
    assert "agent 'x' is under its daily budget" in message
    assert "set input_usd_per_mtok and output_usd_per_mtok on the model" in message
    assert not await sync_to_async(Budget.objects.filter(agent__name="x").exists)()
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"cheap_model": "free"})
    assert _error(response, 422, "validation_error").startswith("cheap_model: model 'free'")


async def test_an_agent_stored_under_todays_floors_reads_back_and_a_patch_names_the_field(
    keys: dict[str, str],
) -> None:
    # Values the columns allow and the schema now refuses (stored before the floors existed).
    await Agent.objects.filter(name="other").aupdate(timeout_s=0.05, breaker_failure_rate=0.0005)
    got = await call("GET", "/api/v1/agents/other", keys["admin"])
    assert got.status_code == 200, got.content
    assert (got.json()["timeout_s"], got.json()["breaker"]["failure_rate_threshold"]) == (
        0.05,
        0.0005,
    )
    listed = await call("GET", "/api/v1/agents", keys["admin"])
    assert listed.status_code == 200

    response = await call("PATCH", "/api/v1/agents/other", keys["admin"], {"max_retries": 1})

    assert _error(response, 422, "validation_error") == (
        "timeout_s: must be >= 0.1; breaker.failure_rate_threshold: must be >= 0.001"
    )


async def test_a_patch_cannot_rename_an_agent(keys: dict[str, str]) -> None:
    response = await call("PATCH", "/api/v1/agents/helper", keys["admin"], {"name": "renamed"})
    assert _error(response, 422, "validation_error").startswith("name: cannot be changed")


async def test_changing_an_unknown_agent_is_404(keys: dict[str, str]) -> None:
    response = await call("PATCH", "/api/v1/agents/ghost", keys["admin"], {"model": "m"})
    _error(response, 404, "not_found")


async def test_a_restricted_admin_changes_its_agents_and_no_other(keys: dict[str, str]) -> None:
    ok = await call("PATCH", "/api/v1/agents/helper", keys["helper-admin"], {"max_retries": 1})
    assert ok.status_code == 200
    refused = await call("PATCH", "/api/v1/agents/other", keys["helper-admin"], {"max_retries": 1})
    _error(refused, 404, "not_found")
    _error(
        await call("PATCH", "/api/v1/agents/helper", keys["read"], {"max_retries": 2}),
        403,
        "permission_denied",
    )


# --- deleting --------------------------------------------------------------------------------


def _execution_for(agent: str) -> None:
    Execution.objects.create(agent_name=agent, status="succeeded", output="kept")


async def test_deleting_an_agent_removes_it_and_its_budgets_but_keeps_executions(
    keys: dict[str, str],
) -> None:
    await sync_to_async(_execution_for)("helper")
    # (the helper-only key would block it: see the next test)
    await sync_to_async(ApiKey.objects.filter(name="ha").update)(revoked_at=timezone.now())
    response = await call("DELETE", "/api/v1/agents/helper", keys["admin"])
    assert response.status_code == 204
    assert response.content == b""
    assert not await sync_to_async(Agent.objects.filter(name="helper").exists)()
    assert await sync_to_async(Budget.objects.count)() == 0
    assert await sync_to_async(Execution.objects.filter(agent_name="helper").count)() == 1
    (audit,) = await _audit("agent_delete")
    assert audit.before is not None
    assert audit.before["daily_budget_usd"] == "50.000000"
    assert len(await _audit("budget_delete")) == 1
    _error(await call("GET", "/api/v1/agents/helper", keys["read"]), 404, "not_found")
    gone = await call("POST", "/api/v1/agents/helper/execute", keys["admin"], {"input": "hi"})
    _error(gone, 404, "not_found")


async def test_an_agent_that_a_key_alone_may_use_cannot_be_deleted(keys: dict[str, str]) -> None:
    # Deleting it would empty that key's allow-list, which means every agent.
    prefix = (
        await sync_to_async(api_key_create)(name="only", scopes=["execute"], agents=["other"])
    ).api_key.prefix
    message = _error(await call("DELETE", "/api/v1/agents/other", keys["admin"]), 409, "conflict")
    assert prefix in message
    assert await sync_to_async(Agent.objects.filter(name="other").exists)()
    await sync_to_async(ApiKey.objects.filter(prefix=prefix).update)(revoked_at=timezone.now())
    assert (await call("DELETE", "/api/v1/agents/other", keys["admin"])).status_code == 204


async def test_a_key_restricted_to_several_agents_does_not_block_deleting_one(
    keys: dict[str, str],
) -> None:
    await sync_to_async(api_key_create)(name="two", scopes=["execute"], agents=["helper", "other"])
    assert (await call("DELETE", "/api/v1/agents/other", keys["admin"])).status_code == 204


async def test_deleting_needs_admin_and_a_visible_agent(keys: dict[str, str]) -> None:
    _error(await call("DELETE", "/api/v1/agents/other", keys["read"]), 403, "permission_denied")
    _error(await call("DELETE", "/api/v1/agents/other", keys["helper-admin"]), 404, "not_found")
    _error(await call("DELETE", "/api/v1/agents/ghost", keys["admin"]), 404, "not_found")
    assert await sync_to_async(Agent.objects.count)() == 2
