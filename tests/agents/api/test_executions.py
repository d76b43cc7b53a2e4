"""Stored executions over the API: one, a keyset-paginated list, and who may see which."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.devtools.fakellm import FakeLLM, FaultConfig
from agents.engine import engine_shutdown, get_engine
from agents.models import Execution
from agents.selectors import ExecutionAccess, cursor_encode, execution_page
from budgets.models import SpendEntry

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m}
  - {name: other, model: m}
"""

pytestmark = pytest.mark.django_db(transaction=True)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# No execution has it; fixed, so test ids are the same in every process (pytest-xdist compares them).
UNKNOWN_ID = "8d5e9a4c-3f1b-4e27-9c0a-6b2d1f7e5a93"


@dataclass
class World:
    keys: dict[str, str]
    key_ids: dict[str, int]


def _setup() -> World:
    config_apply(document=config_parse(DOC))
    created = {
        "producer": api_key_create(name="producer", scopes=["execute"]),
        "reader": api_key_create(name="reader", scopes=["read"]),
        "operator": api_key_create(name="operator", scopes=["operate"]),
        "executor": api_key_create(name="executor", scopes=["execute"]),
        "helper-reader": api_key_create(name="hr", scopes=["read"], agents=["helper"]),
    }
    return World(
        keys={name: c.plaintext for name, c in created.items()},
        key_ids={name: c.api_key.pk for name, c in created.items()},
    )


@pytest.fixture
async def world(settings: Any, tmp_path: Path) -> AsyncIterator[World]:
    # A journal of this test's own: the drainer must not bring in other runs' executions.
    settings.VAR_DIR = tmp_path
    yield await sync_to_async(_setup)()
    await engine_shutdown()


def _row(agent: str = "helper", *, key_id: int | None = None, **fields: Any) -> Execution:
    values: dict[str, Any] = {
        "agent_name": agent,
        "api_key_id": key_id,
        "status": "succeeded",
        "created_at": T0,
    } | fields
    return Execution.objects.create(**values)


async def row(agent: str = "helper", *, key_id: int | None = None, **fields: Any) -> str:
    created = await sync_to_async(_row)(agent, key_id=key_id, **fields)
    return str(created.pk)


async def get(key: str, path: str) -> Any:
    # Headers go on the request: AsyncClient(headers=...) defaults do not reach ASGI scopes.
    return await AsyncClient().get(path, headers={"Authorization": f"Bearer {key}"})


# --- one execution ---------------------------------------------------------------------------


async def test_a_stored_execution_reads_as_the_contracts_result(world: World) -> None:
    steps = [
        {
            "kind": "attempt",
            "model": "m",
            "deployment": 1,
            "outcome": "ok",
            "detail": "",
            "latency_ms": 12.5,
            "input_tokens": 3,
            "output_tokens": 4,
        }
    ]
    execution_id = await row(
        key_id=world.key_ids["producer"],
        output="Hello.",
        model="m",
        deployment_id=1,
        attempts=1,
        input_tokens=3,
        output_tokens=4,
        cost_usd=Decimal("0.00001100"),
        latency_ms=40,
        steps=steps,
        input=[{"role": "user", "content": "hi"}],
        metadata={"ticket": 7},
        session_id="s-1",
        finished_at=T0 + timedelta(milliseconds=40),
    )
    response = await get(world.keys["reader"], f"/api/v1/executions/{execution_id}")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "execution_id": execution_id,
        "agent": "helper",
        "status": "succeeded",
        "output": "Hello.",
        "model": "m",
        "deployment": 1,
        "attempts": 1,
        "fallback_used": False,
        "fallback_reason": None,
        "cached": False,
        "usage": {"input_tokens": 3, "output_tokens": 4},
        "cost_usd": 0.000011,
        "latency_ms": 40.0,
        "created_at": T0.timestamp(),
        "started_at": None,  # made here without one (the claim or the record sets it)
        "model_choice": "standard",
        "finished_at": (T0 + timedelta(milliseconds=40)).timestamp(),
        "session_id": "s-1",
        "error": None,
        "steps": steps,
        "input": [{"role": "user", "content": "hi"}],
        "metadata": {"ticket": 7},
    }


@pytest.mark.parametrize("status", ["queued", "running"])
async def test_an_unfinished_execution_has_no_latency_or_answer_yet(
    world: World, status: str
) -> None:
    execution_id = await row(status=status, key_id=world.key_ids["producer"])
    body = (await get(world.keys["reader"], f"/api/v1/executions/{execution_id}")).json()
    assert body["status"] == status
    assert body["latency_ms"] is None
    assert body["finished_at"] is None
    assert body["model"] is None
    assert body["output"] == ""


async def test_an_execution_run_through_the_api_reads_back_the_same(world: World) -> None:
    response = await AsyncClient().post(
        "/api/v1/agents/helper/execute",
        data=json.dumps({"input": "hello there", "metadata": {"a": 1}}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {world.keys['producer']}"},
    )
    answered = response.json()
    drainer = get_engine().drainer
    assert drainer is not None
    await drainer.drain_now()
    stored = await get(world.keys["reader"], f"/api/v1/executions/{answered['execution_id']}")
    assert stored.status_code == 200
    body = stored.json()
    for field in ("execution_id", "agent", "status", "output", "model", "deployment", "attempts",
                  "fallback_used", "fallback_reason", "cached", "usage", "steps", "model_choice"):  # fmt: skip
        assert body[field] == answered[field], field
    assert body["cost_usd"] == pytest.approx(answered["cost_usd"], abs=1e-8)
    assert body["created_at"] == pytest.approx(answered["created_at"], abs=1e-3)
    assert body["input"] == [{"role": "user", "content": "hello there"}]
    assert body["metadata"] == {"a": 1}


async def test_an_upstream_reply_whose_text_cannot_be_decoded_is_charged_and_in_the_ledger(
    world: World,
) -> None:
    async with FakeLLM(FaultConfig(malformed_rate=1, malformed_mode="invalid_utf8")) as fake:
        doc = f"""
providers:
  - {{name: garbling, kind: openai, base_url: "{fake.url}/v1"}}
models:
  - {{name: g, provider: garbling, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 100, output_usd_per_mtok: 200}}
agents:
  - {{name: garbled, model: g, max_retries: 0}}
"""
        await sync_to_async(config_apply)(document=config_parse(doc))
        await sync_to_async(get_engine().config.reload)()  # this process sees it at once
        response = await AsyncClient().post(
            "/api/v1/agents/garbled/execute",
            data=json.dumps({"input": "hello there"}),
            content_type="application/json",
            headers={"Authorization": f"Bearer {world.keys['producer']}"},
        )
    answered = response.json()
    assert answered["status"] == "degraded"
    assert answered["fallback_reason"] == "llm_error"
    # fakellm billed 3 input tokens (11 characters // 4 + 1 message) and its 16 output tokens.
    assert answered["usage"] == {"input_tokens": 3, "output_tokens": 16}
    expected = (Decimal(3) * 100 + Decimal(16) * 200) / 1_000_000
    assert answered["cost_usd"] == pytest.approx(float(expected), abs=1e-12)
    drainer = get_engine().drainer
    assert drainer is not None
    await drainer.drain_now()
    entry = await SpendEntry.objects.aget(execution_id=answered["execution_id"])
    assert entry.cost_usd == expected
    assert (entry.input_tokens, entry.output_tokens) == (3, 16)


@pytest.mark.parametrize("ident", ["not-a-uuid", UNKNOWN_ID])
async def test_an_unknown_execution_is_404(world: World, ident: str) -> None:
    response = await get(world.keys["reader"], f"/api/v1/executions/{ident}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


# --- who sees what ---------------------------------------------------------------------------


async def test_a_key_sees_its_own_executions_even_without_read(world: World) -> None:
    own = await row(key_id=world.key_ids["executor"])
    response = await get(world.keys["executor"], f"/api/v1/executions/{own}")
    assert response.status_code == 200


async def test_another_keys_execution_is_404_to_a_key_without_read(world: World) -> None:
    theirs = await row(key_id=world.key_ids["producer"])
    response = await get(world.keys["executor"], f"/api/v1/executions/{theirs}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


async def test_readers_see_the_executions_of_the_agents_they_may_use(world: World) -> None:
    helper = await row("helper", key_id=world.key_ids["producer"])
    other = await row("other", key_id=world.key_ids["producer"])
    for key in ("reader", "operator"):
        for execution_id in (helper, other):
            response = await get(world.keys[key], f"/api/v1/executions/{execution_id}")
            assert response.status_code == 200, (key, execution_id)
    limited = world.keys["helper-reader"]
    assert (await get(limited, f"/api/v1/executions/{helper}")).status_code == 200
    assert (await get(limited, f"/api/v1/executions/{other}")).status_code == 404


async def test_the_list_shows_each_key_only_what_it_may_see(world: World) -> None:
    helper = await row("helper", key_id=world.key_ids["producer"])
    other = await row("other", key_id=world.key_ids["producer"], created_at=T0 + timedelta(1))
    own = await row("other", key_id=world.key_ids["executor"], created_at=T0 + timedelta(2))

    async def listed(key: str) -> list[str]:
        response = await get(world.keys[key], "/api/v1/executions")
        assert response.status_code == 200
        return [item["execution_id"] for item in response.json()["items"]]

    assert await listed("reader") == [own, other, helper]
    assert await listed("executor") == [own]
    assert await listed("helper-reader") == [helper]


# --- the list --------------------------------------------------------------------------------


async def test_the_list_pages_newest_first_without_gaps_or_repeats(world: World) -> None:
    # Five rows, three of them created at the same instant: the id breaks the tie.
    times = [T0, T0, T0, T0 - timedelta(seconds=1), T0 + timedelta(seconds=1)]
    ids = [await row(created_at=when) for when in times]
    expected = sorted(
        zip(times, ids, strict=True), key=lambda pair: (pair[0], uuid.UUID(pair[1])), reverse=True
    )
    seen: list[str] = []
    path = "/api/v1/executions?limit=2"
    pages = 0
    while True:
        body = (await get(world.keys["reader"], path)).json()
        pages += 1
        seen += [item["execution_id"] for item in body["items"]]
        if body["next"] is None:
            break
        path = f"/api/v1/executions?limit=2&after={body['next']}"
    assert seen == [ident for _, ident in expected]
    assert pages == 3


async def test_the_list_filters_by_agent_and_status(world: World) -> None:
    await row("helper", status="succeeded")
    running = await row("helper", status="running")
    await row("other", status="running")
    path = "/api/v1/executions?agent=helper&status=running"
    body = (await get(world.keys["reader"], path)).json()
    assert [item["execution_id"] for item in body["items"]] == [running]
    assert body["next"] is None


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("status=exploded", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("after=%21%21%21", "after: invalid cursor"),
        (f"after={cursor_encode('yesterday', 'x')}", "after: invalid cursor"),
        (f"after={cursor_encode(T0.isoformat(), 'not-a-uuid')}", "after: invalid cursor"),
        (f"after={cursor_encode('2026-03-01T12:00:00', UNKNOWN_ID)}", "after: invalid"),
    ],
)
async def test_bad_list_parameters_are_422(world: World, query: str, fragment: str) -> None:
    response = await get(world.keys["reader"], f"/api/v1/executions?{query}")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert fragment in error["message"]


def test_a_page_is_one_query_at_any_depth(django_assert_num_queries: Any) -> None:
    for index in range(6):
        _row(created_at=T0 - timedelta(seconds=index))
    access = ExecutionAccess(key_id=1, readable_agents=None)
    with django_assert_num_queries(1):
        first = execution_page(access=access, agent=None, status=None, after=None, limit=3)
    with django_assert_num_queries(1):
        second = execution_page(
            access=access, agent="helper", status="succeeded", after=first["next"], limit=3
        )
    assert len(first["items"]) == len(second["items"]) == 3
    assert second["next"] is None
