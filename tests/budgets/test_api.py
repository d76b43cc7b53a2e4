"""The budgets and stats endpoints: auth, visibility, the shapes of docs/INTERFACES.md §4, errors,
CSV."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from django.utils import timezone

from agents.access.services import api_key_create
from agents.backends import state_for_jobs
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown
from agents.models import Agent
from agents.runtime.state import BreakerConfig, BudgetHold, Completion, WindowInit
from budgets.models import Budget, SpendRollup, TrafficRollup
from core.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: support, model: m, daily_budget_usd: 50}
  - {name: billing, model: m, daily_budget_usd: 20}
budgets:
  - {scope: global, daily_limit_usd: 1000}
"""

INTERFACE_FIELDS = {
    "id", "scope", "target", "window", "limit_usd", "spent_usd", "reserved_usd",
    "remaining_usd", "forecast_usd", "state",
}  # fmt: skip


def _setup() -> dict[str, Any]:
    config_apply(document=config_parse(DOC))
    limited = api_key_create(name="limited", scopes=["read", "operate"], agents=["support"])
    Budget.objects.create(scope="api_key", api_key=limited.api_key, limit_usd=Decimal(5))
    now = timezone.now()
    today = now.date()
    for agent in ("support", "billing"):
        SpendRollup.objects.create(
            day=today,
            agent_name=agent,
            model="m",
            requests=4,
            succeeded=3,
            failed=1,
            cached=1,
            cost_usd=Decimal("0.4"),
            latency_sum_ms=400,
            latency_count=4,
            latency_buckets=[0, 0, 0, 0, 4],
            model_choices={"standard": 4},
            fallbacks=1,
            fallback_reasons={"timeout": 1},
        )
        for step in (60, 3600):  # the current minute and hour: what 1h and 24h read
            TrafficRollup.objects.create(
                step_s=step,
                start=datetime.fromtimestamp(int(now.timestamp()) // step * step, UTC),
                agent_name=agent,
                requests=4,
                succeeded=3,
                failed=1,
                cached=1,
                fallbacks=1,
                fallback_reasons={"timeout": 1},
                cost_usd=Decimal("0.4"),
                latency_sum_ms=400,
                latency_count=4,
                latency_buckets=[0, 0, 0, 0, 4],
                model_choices={"standard": 4},
            )
    return {
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "operate": api_key_create(name="operate", scopes=["operate"]).plaintext,
        "execute": api_key_create(name="execute", scopes=["execute"]).plaintext,
        "limited": limited.plaintext,
        "limited_prefix": limited.api_key.prefix,
        "ids": {
            (b.scope, b.target): b.pk for b in Budget.objects.select_related("agent", "api_key")
        },
    }


@pytest.fixture
async def ctx() -> AsyncIterator[dict[str, Any]]:
    created = await sync_to_async(_setup)()
    yield created
    await engine_shutdown()


async def call(method: str, path: str, key: str | None, body: Any = None, **extra: Any) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    client = AsyncClient()
    if body is None:
        return await getattr(client, method)(path, headers=headers, **extra)
    data = body if isinstance(body, str) else json.dumps(body)
    return await getattr(client, method)(
        path, data=data, content_type="application/json", headers=headers, **extra
    )


async def test_the_budget_list_has_the_contracts_items(ctx: dict[str, Any]) -> None:
    response = await call("get", "/api/v1/budgets", ctx["read"])

    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    items = {(item["scope"], item["target"]): item for item in body["items"]}
    assert set(items) == {
        ("global", "*"),
        ("agent", "support"),
        ("agent", "billing"),
        ("api_key", ctx["limited_prefix"]),
    }
    support = items[("agent", "support")]
    assert set(support) >= INTERFACE_FIELDS
    assert support["window"] == "daily"
    assert support["limit_usd"] == 50.0
    assert support["state"] in {"ok", "warning", "exceeded"}
    assert isinstance(support["forecast_usd"], float)
    assert {"warn_at_pct", "alert_at_pct", "paused", "raise_usd", "raise_until",
            "window_ends_at", "predictability"} <= set(support)  # fmt: skip


async def test_spent_comes_from_the_shared_budget_counters(ctx: dict[str, Any]) -> None:
    async def spent() -> tuple[float, str]:
        response = await call("get", "/api/v1/budgets", ctx["read"])
        (item,) = [i for i in response.json()["items"] if i["target"] == "billing"]
        return item["spent_usd"], item["window_id"]

    before, window_id = await spent()
    store = await state_for_jobs()
    key = f"budget:{ctx['ids'][('agent', 'billing')]}:{window_id}"
    entry_id = str(uuid.uuid4())
    await store.budget_prepare((WindowInit(key, 0, 86_400.0),))
    assert (
        await store.budget_reserve((BudgetHold(key, 10**9, 2_000_000, 86_400.0),), entry_id, 60.0)
    )[0]
    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=BreakerConfig(),
            entry_id=entry_id,
            budget_settlements=((key, 1_250_000),),
        )
    )  # fmt: skip
    after, _ = await spent()

    assert after - before == pytest.approx(1.25)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/budgets", None),
        ("patch", "/api/v1/budgets/1", {"paused": True}),
        ("post", "/api/v1/budgets/1/raise", {"amount_usd": 1, "reason": "x"}),
        ("get", "/api/v1/stats/agents", None),
    ],
)
async def test_no_key_or_a_bad_key_is_401(
    ctx: dict[str, Any], method: str, path: str, body: Any
) -> None:
    for key in (None, "bw_" + "x" * 46):
        response = await call(method, path, key, body)
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"


async def test_reading_needs_the_read_scope_and_changing_needs_operate(
    ctx: dict[str, Any],
) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    assert (await call("get", "/api/v1/budgets", ctx["execute"])).status_code == 403
    assert (await call("get", "/api/v1/stats/agents", ctx["execute"])).status_code == 403
    refused = await call("patch", f"/api/v1/budgets/{budget_id}", ctx["read"], {"paused": True})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_denied"
    raise_refused = await call(
        "post", f"/api/v1/budgets/{budget_id}/raise", ctx["read"], {"amount_usd": 1, "reason": "x"}
    )
    assert raise_refused.status_code == 403
    # operate implies read
    assert (await call("get", "/api/v1/budgets", ctx["operate"])).status_code == 200
    assert not await Budget.objects.filter(paused=True).aexists()


async def test_a_key_limited_to_some_agents_sees_only_their_budgets_and_its_own(
    ctx: dict[str, Any],
) -> None:
    response = await call("get", "/api/v1/budgets", ctx["limited"])
    targets = {(i["scope"], i["target"]) for i in response.json()["items"]}
    assert targets == {("agent", "support"), ("api_key", ctx["limited_prefix"])}

    for hidden in (ctx["ids"][("agent", "billing")], ctx["ids"][("global", "*")], 999_999):
        for method, path, body in (
            ("get", f"/api/v1/budgets/{hidden}", None),
            ("patch", f"/api/v1/budgets/{hidden}", {"paused": True}),
            ("post", f"/api/v1/budgets/{hidden}/raise", {"amount_usd": 1, "reason": "x"}),
        ):
            response = await call(method, path, ctx["limited"], body)
            assert response.status_code == 404, (method, path)
            assert response.json()["error"]["type"] == "not_found"
    assert not await Budget.objects.filter(paused=True).aexists()


async def test_pausing_and_resuming_through_the_api(ctx: dict[str, Any]) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    paused = await call("patch", f"/api/v1/budgets/{budget_id}", ctx["limited"], {"paused": True})
    assert paused.status_code == 200
    assert (paused.json()["state"], paused.json()["paused"]) == ("paused", True)
    assert paused.json()["remaining_usd"] == 0.0
    event = await AuditEvent.objects.aget(action="budget_pause")
    assert event.actor == f"apikey:{ctx['limited_prefix']}"

    resumed = await call("patch", f"/api/v1/budgets/{budget_id}", ctx["operate"], {"paused": False})
    assert resumed.json()["paused"] is False
    assert resumed.json()["state"] != "paused"


async def test_a_raise_through_the_api_lifts_the_limit_until_the_window_ends(
    ctx: dict[str, Any],
) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    response = await call(
        "post",
        f"/api/v1/budgets/{budget_id}/raise",
        ctx["operate"],
        {"amount_usd": 25.5, "reason": "launch"},
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["limit_usd"], body["base_limit_usd"], body["raise_usd"]) == (75.5, 50.0, 25.5)
    assert body["raise_until"] == body["window_ends_at"]
    assert (await AuditEvent.objects.aget(action="budget_raise")).reason == "launch"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"paused": True, "limit_usd": 5}, "limit_usd", id="unknown-field"),
        pytest.param({"paused": "yes"}, "paused", id="not-a-boolean"),
        pytest.param({}, "paused", id="missing"),
    ],
)
async def test_a_bad_patch_is_422_in_the_error_format(
    ctx: dict[str, Any], body: Any, fragment: str
) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    response = await call("patch", f"/api/v1/budgets/{budget_id}", ctx["operate"], body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["type"] == "validation_error"
    assert fragment in error["message"]
    assert not (await Budget.objects.aget(pk=budget_id)).paused


async def test_a_body_that_is_not_json_is_400_in_the_error_format(ctx: dict[str, Any]) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    response = await call("patch", f"/api/v1/budgets/{budget_id}", ctx["operate"], "{not json")
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"type", "message"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"amount_usd": 0, "reason": "x"}, "amount_usd", id="zero"),
        pytest.param({"amount_usd": -1, "reason": "x"}, "amount_usd", id="negative"),
        pytest.param({"amount_usd": "5", "reason": "x"}, "amount_usd", id="a-string"),
        pytest.param({"amount_usd": 1e8, "reason": "x"}, "amount_usd", id="too-large"),
        pytest.param('{"amount_usd": Infinity, "reason": "x"}', "amount_usd", id="infinite"),
        pytest.param({"amount_usd": 0.0000001, "reason": "x"}, "amount_usd", id="too-fine"),
        pytest.param({"amount_usd": 1}, "reason", id="no-reason"),
        pytest.param({"amount_usd": 1, "reason": ""}, "reason", id="empty-reason"),
        pytest.param({"amount_usd": 1, "reason": "x", "until": "never"}, "until", id="extra"),
    ],
)
async def test_a_bad_raise_is_422_naming_the_field(
    ctx: dict[str, Any], body: Any, fragment: str
) -> None:
    budget_id = ctx["ids"][("agent", "support")]
    response = await call("post", f"/api/v1/budgets/{budget_id}/raise", ctx["operate"], body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "validation_error"
    assert response.json()["error"]["message"].startswith(fragment)
    assert (await Budget.objects.aget(pk=budget_id)).raise_usd is None


async def test_the_agent_stats_table_as_json(ctx: dict[str, Any]) -> None:
    response = await call("get", "/api/v1/stats/agents?window=7d", ctx["read"])
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == "7d"
    assert body["next"] is None
    rows = {item["agent"]: item for item in body["items"]}
    assert set(rows) == {"support", "billing"}
    support = rows["support"]
    assert (support["requests"], support["success_rate"], support["cache_hit_rate"]) == (
        4,
        0.75,
        0.25,
    )
    assert support["avg_latency_ms"] == 100.0
    assert support["p95_latency_ms"] is not None
    assert support["cost_usd"] == 0.4
    assert support["model_choices"] == {"standard": 4}
    assert (support["fallbacks"], support["fallback_rate"]) == (1, 0.25)
    assert support["fallback_reasons"] == {"timeout": 1}


@pytest.mark.parametrize("window", ["1h", "24h"])
async def test_the_trailing_windows_read_the_traffic_rollups(
    ctx: dict[str, Any], window: str
) -> None:
    response = await call("get", f"/api/v1/stats/agents?window={window}", ctx["read"])
    assert response.status_code == 200
    body = response.json()
    assert body["window"] == window
    rows = {item["agent"]: item for item in body["items"]}
    assert {name: row["requests"] for name, row in rows.items()} == {"support": 4, "billing": 4}
    assert rows["support"]["fallback_reasons"] == {"timeout": 1}


async def test_the_agent_stats_table_as_csv(ctx: dict[str, Any]) -> None:
    response = await call("get", "/api/v1/stats/agents?window=24h&format=csv", ctx["read"])
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == 'attachment; filename="agent-stats-24h.csv"'
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["agent"] for row in rows] == ["billing", "support"]
    header = response.content.decode().splitlines()[0].split(",")
    assert header[:4] == ["agent", "requests", "requests_per_day", "succeeded"]
    assert {"avg_latency_ms", "p95_latency_ms", "success_rate", "cost_per_day_usd",
            "cache_hit_rate", "saved_usd", "input_tokens", "output_tokens"} <= set(header)  # fmt: skip
    # Issue 12 appended its columns after the earlier ones.
    assert header[-4:] == ["model_choices", "fallbacks", "fallback_rate", "fallback_reasons"]
    support = next(row for row in rows if row["agent"] == "support")
    assert (support["requests"], support["success_rate"]) == ("4", "0.75")
    assert support["model_choices"] == "standard=4"
    assert (support["fallbacks"], support["fallback_rate"]) == ("1", "0.25")
    assert support["fallback_reasons"] == "timeout=1"


async def test_a_limited_key_sees_only_its_agents_stats(ctx: dict[str, Any]) -> None:
    for path in ("/api/v1/stats/agents", "/api/v1/stats/agents?format=csv"):
        response = await call("get", path, ctx["limited"])
        text = response.content.decode()
        assert "support" in text
        assert "billing" not in text


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ("window=1y", "window"),
        ("format=xml", "format"),
        ("window=24h&agent=support", "agent: unknown query parameter"),
    ],
)
async def test_bad_stats_parameters_are_422(ctx: dict[str, Any], query: str, fragment: str) -> None:
    response = await call("get", f"/api/v1/stats/agents?{query}", ctx["read"])
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "validation_error"
    assert fragment in response.json()["error"]["message"]


async def test_the_endpoints_are_in_the_openapi_document(ctx: dict[str, Any]) -> None:
    schema = (await AsyncClient().get("/api/v1/openapi.json")).json()
    assert {"/api/v1/budgets", "/api/v1/budgets/{budget_id}", "/api/v1/budgets/{budget_id}/raise",
            "/api/v1/stats/agents"} <= set(schema["paths"])  # fmt: skip


async def test_a_deleted_agent_takes_its_budget_with_it(ctx: dict[str, Any]) -> None:
    await Agent.objects.filter(name="billing").adelete()
    response = await call("get", "/api/v1/budgets", ctx["read"])
    assert ("agent", "billing") not in {(i["scope"], i["target"]) for i in response.json()["items"]}


TINY = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1000, output_usd_per_mtok: 1000}
agents:
  - {name: pricey, model: m, max_tokens: 50, max_retries: 0, daily_budget_usd: 0.001}
"""


async def test_a_budget_that_cannot_admit_the_agents_worst_case_call_is_exceeded_and_counts_refusals() -> (
    None
):
    """Issue: every call refused under a $0.001 limit, yet the API said spent 0, state "ok"."""
    from agents.engine import get_engine
    from agents.runtime.types import ExecutionRequest, ExecutionStatus, Message

    await sync_to_async(config_apply)(document=config_parse(TINY))
    key = (await sync_to_async(api_key_create)(name="r", scopes=["read"])).plaintext
    await get_engine().start()

    async def item() -> dict[str, Any]:
        (budget,) = (await call("get", "/api/v1/budgets", key)).json()["items"]
        return budget  # type: ignore[no-any-return]

    before = await item()
    assert (before["spent_usd"], before["state"], before["refused"]) == (0.0, "exceeded", 0)
    assert before["floor_usd"] > before["limit_usd"]  # its worst-case call: over the limit
    for _ in range(3):
        result = await get_engine().execute(
            ExecutionRequest(
                agent="pricey", messages=(Message("user", "hi"),), execution_id=str(uuid.uuid4())
            )
        )
        assert (result.status, result.fallback_reason) == (
            ExecutionStatus.DEGRADED,
            "budget_exceeded",
        )
    after = await item()
    assert (after["state"], after["refused"]) == ("exceeded", 3)
    await engine_shutdown()


async def test_a_budget_below_100_percent_that_refused_a_call_that_size_is_exceeded(
    ctx: dict[str, Any],
) -> None:
    """Issue: at 99.4% used, with every call refused, it said "warning"."""
    response = await call("get", "/api/v1/budgets", ctx["read"])
    (item,) = [i for i in response.json()["items"] if i["target"] == "billing"]
    key = f"budget:{item['id']}:{item['window_id']}"
    store = await state_for_jobs()
    await store.budget_prepare((WindowInit(key, 0, 86_400.0),))
    spent = str(uuid.uuid4())  # 99.4% of $20 spent
    assert (
        await store.budget_reserve((BudgetHold(key, 10**9, 19_880_000, 86_400.0),), spent, 60.0)
    )[0]
    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=BreakerConfig(),
            entry_id=spent,
            budget_settlements=((key, 19_880_000),),
        )
    )
    hold = BudgetHold(key, 20_000_000, 150_000, 86_400.0)  # asks $0.15: $0.12 left
    assert (await store.budget_reserve((hold,), str(uuid.uuid4()), 60.0))[0] is False
    response = await call("get", "/api/v1/budgets", ctx["read"])
    (item,) = [i for i in response.json()["items"] if i["target"] == "billing"]
    assert (item["state"], item["refused"], item["floor_usd"]) == ("exceeded", 1, 0.15)
