"""``GET /api/v1/slos``: each agent's objectives, SLIs per window, error budget remaining and burn
rates, from the rollups; scope read; a key limited to some agents sees only those."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from budgets.rollups import traffic_rollups_refresh
from tests.budgets.conftest import execution

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1}
agents:
  - {name: support, model: m, slo: {availability: 0.99, latency_ms: 1000}}
  - {name: billing, model: m}
"""
WINDOWS = ["5m", "30m", "1h", "6h", "24h", "30d"]


def _setup() -> dict[str, str]:
    config_apply(document=config_parse(DOC))
    now = timezone.now()
    at = now - timedelta(seconds=30) if now.second >= 30 else now
    for _ in range(8):
        execution(at=at, latency_ms=200)
    execution(at=at, latency_ms=1500)  # slow for support
    execution(at=at, status="failed", latency_ms=100)
    execution(at=at, status="cancelled", latency_ms=None)
    traffic_rollups_refresh(now=now)
    return {
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "billing": api_key_create(name="b", scopes=["read"], agents=["billing"]).plaintext,
    }


@pytest.fixture
async def keys() -> AsyncIterator[dict[str, str]]:
    yield await sync_to_async(_setup)()
    await engine_shutdown()


async def get(path: str, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await AsyncClient().get(path, headers=headers)


async def test_each_agent_has_its_objective_slis_per_window_budget_and_burn_rates(
    keys: dict[str, str],
) -> None:
    response = await get("/api/v1/slos", keys["read"])
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["next"] is None
    assert [item["agent"] for item in body["items"]] == ["billing", "support"]
    support = body["items"][1]
    assert support["objective"] == {
        "availability": 0.99,
        "latency_ms": 1000,
        "latency_quantile": 0.95,
    }
    assert support["enabled"] is True
    availability = support["availability"]
    assert list(availability["windows"]) == WINDOWS
    for window in WINDOWS:  # every window holds the last minute's traffic
        assert availability["windows"][window] == {
            "valid": 10,
            "good": 9,
            "bad": 1,
            "sli": 0.9,
            "burn_rate": 10.0,
        }
    assert availability["objective"] == 0.99
    assert availability["error_budget_remaining"] == pytest.approx(1 - 1 / (0.01 * 10))
    assert availability["burn"] == "slow"  # 10x: over 6x (6h, 30m), under 14.4x (1h)
    latency = support["latency"]
    assert latency["windows"]["1h"] == {
        "valid": 10,
        "good": 9,
        "bad": 1,
        "sli": 0.9,
        "burn_rate": 2.0,
    }
    assert latency["burn"] is None
    days = support["error_budget_by_day"]
    assert len(days) == 31
    assert days[-1] == {
        "day": timezone.now().date().isoformat(),
        "availability": availability["error_budget_remaining"],
        "latency": latency["error_budget_remaining"],
    }
    billing = body["items"][0]
    assert billing["availability"]["windows"]["30d"]["valid"] == 0
    assert billing["availability"]["error_budget_remaining"] is None


async def test_a_key_limited_to_some_agents_sees_only_theirs(keys: dict[str, str]) -> None:
    response = await get("/api/v1/slos", keys["billing"])
    assert [item["agent"] for item in response.json()["items"]] == ["billing"]


async def test_the_list_needs_the_read_scope_and_takes_no_parameters(
    keys: dict[str, str],
) -> None:
    assert (await get("/api/v1/slos", keys["execute"])).status_code == 403
    assert (await get("/api/v1/slos", None)).status_code == 401
    refused = await get("/api/v1/slos?window=1h", keys["read"])
    assert refused.status_code == 422
    assert refused.json()["error"]["message"] == "window: unknown query parameter"


def test_the_openapi_document_describes_the_list() -> None:
    from console.api import api

    document = api.get_openapi_schema(path_prefix="/api/v1")
    operation = document["paths"]["/api/v1/slos"]["get"]
    ref = operation["responses"][200]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/SloListOut")
    schemas = document["components"]["schemas"]
    assert set(schemas["SloOut"]["properties"]) == {
        "agent",
        "enabled",
        "objective",
        "availability",
        "latency",
        "error_budget_by_day",
    }
    assert "burn_rate" in schemas["SloWindowOut"]["properties"]
