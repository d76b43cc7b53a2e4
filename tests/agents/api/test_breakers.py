"""Agent and deployment breakers over the API: shared state, operator actions, their effects.

Breaker state lives in the shared store (the process's memory, or Redis), which outlives a test's
database: each test uses agent names of its own and resets every breaker it touched.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.config.live import config_version_current
from agents.engine import engine_shutdown, get_engine
from agents.models import ModelDeployment
from agents.runtime.state import BreakerConfig, Outcome
from core.models import AuditEvent
from incidents.models import Incident

pytestmark = pytest.mark.django_db(transaction=True)
WAKE_S = 1.0  # the recovery time of the breakers that a test waits out


@dataclass
class World:
    agent: str  # answers
    flaky: str  # its only model always fails; one failure opens its breaker
    waking: str  # the same, but its breaker may probe again after 1 s
    deployment: int  # the agent's only deployment
    broken: int  # the flaky agent's only deployment
    keys: dict[str, str]
    operator_prefix: str


def _setup(tag: str) -> World:
    doc = f"""
providers:
  - {{name: sim, kind: simulated, simulation: {{latency_ms: 0, error_rate: 0, seed: 1}}}}
  - {{name: down, kind: simulated, simulation: {{latency_ms: 0, error_rate: 1, seed: 1}}}}
models:
  - {{name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: broken, provider: down, upstream_model: b-1}}
agents:
  - {{name: a-{tag}, model: m, max_retries: 0}}
  - name: f-{tag}
    model: broken
    max_retries: 0
    breaker: {{failure_threshold: 1, recovery_timeout_s: 600}}
  - name: w-{tag}
    model: broken
    max_retries: 0
    breaker: {{failure_threshold: 1, recovery_timeout_s: {WAKE_S}}}
"""
    config_apply(document=config_parse(doc))
    operator = api_key_create(name="op", scopes=["operate"])
    keys = {
        "operate": operator.plaintext,
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "agent-operator": api_key_create(
            name="aop", scopes=["operate"], agents=[f"a-{tag}"]
        ).plaintext,
    }
    return World(
        agent=f"a-{tag}",
        flaky=f"f-{tag}",
        waking=f"w-{tag}",
        deployment=ModelDeployment.objects.get(name="m").pk,
        broken=ModelDeployment.objects.get(name="broken").pk,
        keys=keys,
        operator_prefix=operator.api_key.prefix,
    )


async def _reset(world: World) -> None:
    state = get_engine().state
    for key in (
        f"agent:{world.agent}",
        f"agent:{world.flaky}",
        f"agent:{world.waking}",
        f"deployment:{world.deployment}",
        f"deployment:{world.broken}",
    ):
        await state.breaker_command(key, "reset")


@pytest.fixture
async def world(settings: Any, tmp_path: Path) -> AsyncIterator[World]:
    settings.VAR_DIR = tmp_path  # this test's own execution journal
    created = await sync_to_async(_setup)(uuid.uuid4().hex[:8])
    await _reset(created)  # deployment ids repeat across tests and runs; Redis remembers
    engine = get_engine()
    await engine.start()
    if engine.drainer is not None:
        # These tests read breakers and incidents, not execution records: no background
        # writes of records meanwhile (SQLite takes one writer at a time).
        await engine.drainer.stop()
    yield created
    await _reset(created)
    await engine_shutdown()


async def call(key: str, method: str, path: str, body: Any = None) -> Any:
    # Headers go on the request: AsyncClient(headers=...) defaults do not reach ASGI scopes.
    headers = {"Authorization": f"Bearer {key}"}
    if method == "GET":
        response = await AsyncClient().get(path, headers=headers)
    else:
        response = await AsyncClient().post(
            path, data=json.dumps(body), content_type="application/json", headers=headers
        )
    await _incidents_written()
    return response


async def _incidents_written() -> None:
    """Wait until the engine's incident writer (one background thread) has written what the
    request's breaker transitions asked for: a no-op queued behind them returns when they are
    done. Incidents are then checked without waiting on time, and no write of theirs overlaps
    the next request's (SQLite takes one writer at a time)."""
    await asyncio.wrap_future(get_engine().incidents._thread.submit(lambda: None))


async def execute(world: World, agent: str) -> dict[str, Any]:
    path = f"/api/v1/agents/{agent}/execute"
    response = await call(world.keys["execute"], "POST", path, {"input": "hi"})
    assert response.status_code == 200, response.content
    return dict(response.json())


async def _incident(key: str) -> Incident | None:
    return await sync_to_async(
        lambda: Incident.objects.filter(dedup_key=f"breaker:{key}").order_by("-id").first()
    )()


async def _timeline(incident: Incident) -> list[tuple[str, str]]:
    return await sync_to_async(
        lambda: [(e.kind, e.message) for e in incident.events.order_by("at", "id")]
    )()


# --- agent breakers --------------------------------------------------------------------------


async def test_a_fresh_breaker_reads_closed_with_clean_counters(world: World) -> None:
    response = await call(world.keys["read"], "GET", f"/api/v1/agents/{world.agent}/breaker")
    assert response.status_code == 200
    assert response.json() == {
        "key": f"agent:{world.agent}",
        "state": "closed",
        "consecutive_failures": 0,
        "window_calls": 0,
        "window_failures": 0,
        "window_slow": 0,
        "open_until": None,
        "probes_in_flight": 0,
    }


async def test_forcing_a_breaker_open_degrades_calls_audits_and_opens_an_incident(
    world: World,
) -> None:
    path = f"/api/v1/agents/{world.agent}/breaker"
    response = await call(
        world.keys["operate"], "POST", path, {"action": "force_open", "reason": "drill"}
    )
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "forced_open"
    assert (await call(world.keys["read"], "GET", path)).json()["state"] == "forced_open"

    result = await execute(world, world.agent)
    assert result["status"] == "degraded"
    assert result["fallback_reason"] == "circuit_open"

    audit = await sync_to_async(AuditEvent.objects.get)(action="breaker_force_open")
    assert audit.actor == f"apikey:{world.operator_prefix}"
    assert audit.target_id == f"agent:{world.agent}"
    assert audit.reason == "drill"
    assert audit.before == {"state": "closed"}
    assert audit.after == {"state": "forced_open"}
    assert await _scraped("agent_circuit_breaker_state", agent=world.agent) == 2

    await engine_shutdown()  # waits for the incident writer
    incident = await _incident(f"agent:{world.agent}")
    assert incident is not None
    assert incident.status == "open"
    ((kind, message),) = await _timeline(incident)
    assert kind == "opened"
    assert f"apikey:{world.operator_prefix}: force_open (drill)" in message


async def test_forcing_an_opened_breaker_closed_lets_calls_through_at_once(
    world: World,
) -> None:
    path = f"/api/v1/agents/{world.flaky}/breaker"
    first = await execute(world, world.flaky)
    assert first["fallback_reason"] == "llm_error"
    opened = (await call(world.keys["read"], "GET", path)).json()
    assert opened["state"] == "open"
    assert opened["open_until"] is not None
    refused = await execute(world, world.flaky)
    assert refused["fallback_reason"] == "circuit_open"

    version = await sync_to_async(config_version_current)()
    closed = await call(world.keys["operate"], "POST", path, {"action": "force_close"})
    assert closed.json()["state"] == "forced_closed"
    # The other processes learn of it at their next config poll (the version moved) ...
    assert await sync_to_async(config_version_current)() > version
    # ... and this process, which had learnt the breaker was open, forgets it at once.
    again = await execute(world, world.flaky)
    assert again["fallback_reason"] == "llm_error"

    reset = await call(world.keys["operate"], "POST", path, {"action": "reset"})
    assert reset.json()["state"] == "closed"
    assert reset.json()["consecutive_failures"] == 0

    await engine_shutdown()
    incident = await _incident(f"agent:{world.flaky}")
    assert incident is not None
    assert incident.status == "resolved"
    kinds = [kind for kind, _ in await _timeline(incident)]
    assert kinds[0] == "opened"
    assert kinds[-1] == "resolved"


async def _past(open_until: str) -> None:
    """Sleep until just after ``open_until`` (an ISO time from the API)."""
    delay = datetime.fromisoformat(open_until).timestamp() - time.time()
    await asyncio.sleep(max(0.0, delay) + 0.05)


async def _scraped(name: str, **labels: str) -> float | None:
    """A sample of ``GET /metrics`` (breaker gauges are read from the shared state there)."""
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def _gauge(agent: str) -> float | None:
    return await _scraped("agent_circuit_breaker_state", agent=agent)


async def test_after_its_recovery_time_an_open_breaker_reads_half_open_and_so_does_the_gauge(
    world: World,
) -> None:
    path = f"/api/v1/agents/{world.waking}/breaker"
    assert (await execute(world, world.waking))["fallback_reason"] == "llm_error"
    opened = (await call(world.keys["read"], "GET", path)).json()
    assert opened["state"] == "open"
    assert opened["open_until"] is not None  # when it becomes probe-able
    assert await _gauge(world.waking) == 2

    await _past(opened["open_until"])
    for _ in range(2):  # reading it does not move it
        probeable = (await call(world.keys["read"], "GET", path)).json()
        assert (probeable["state"], probeable["open_until"]) == ("half_open", None)
        assert probeable["probes_in_flight"] == 0
    assert await _gauge(world.waking) == 1  # /metrics says what the API says

    # The next call is the probe; the model still fails, so the breaker opens again.
    assert (await execute(world, world.waking))["fallback_reason"] == "llm_error"
    reopened = (await call(world.keys["read"], "GET", path)).json()
    assert reopened["state"] == "open"
    assert reopened["open_until"] > opened["open_until"]
    assert await _gauge(world.waking) == 2


async def test_a_deployment_breaker_past_its_recovery_time_reads_half_open(world: World) -> None:
    key = f"deployment:{world.broken}"
    short = BreakerConfig(failure_threshold=1, recovery_timeout_s=WAKE_S)
    await get_engine().state.breaker_record(key, short, Outcome.FAILURE, 0.1, False)

    def breaker(listed: dict[str, Any]) -> dict[str, Any]:
        [item] = [item for item in listed["items"] if item["id"] == world.broken]
        return dict(item["breaker"])

    opened = breaker((await call(world.keys["read"], "GET", "/api/v1/deployments")).json())
    assert opened["state"] == "open"
    assert opened["open_until"] is not None
    await _past(opened["open_until"])
    probeable = breaker((await call(world.keys["read"], "GET", "/api/v1/deployments")).json())
    assert (probeable["state"], probeable["open_until"]) == ("half_open", None)
    assert await _scraped("agent_deployment_breaker_state", deployment=str(world.broken)) == 1


@pytest.fixture
def short_deployment_breakers(settings: Any) -> None:
    """Set before ``world`` builds the engine."""
    settings.BREAKWATER_DEPLOYMENT_BREAKER_FAILURES = 2
    settings.BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S = 7.0


async def test_deployment_breakers_follow_their_settings(
    short_deployment_breakers: None, world: World
) -> None:
    # The agent's own breaker out of the way, the deployment's sees every failure.
    path = f"/api/v1/agents/{world.flaky}/breaker"
    await call(world.keys["operate"], "POST", path, {"action": "disable"})

    def breaker(listed: dict[str, Any]) -> dict[str, Any]:
        [item] = [item for item in listed["items"] if item["id"] == world.broken]
        return dict(item["breaker"])

    await execute(world, world.flaky)
    listed = (await call(world.keys["read"], "GET", "/api/v1/deployments")).json()
    assert breaker(listed)["state"] == "closed"  # 1 failure of the 2 that open it
    await execute(world, world.flaky)
    opened = breaker((await call(world.keys["read"], "GET", "/api/v1/deployments")).json())
    assert opened["state"] == "open"
    open_for = datetime.fromisoformat(opened["open_until"]).timestamp() - time.time()
    assert 5.0 < open_for <= 7.0  # BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S, not the default 30


async def test_disabling_a_breaker_admits_everything(world: World) -> None:
    path = f"/api/v1/agents/{world.flaky}/breaker"
    response = await call(world.keys["operate"], "POST", path, {"action": "disable"})
    assert response.json()["state"] == "disabled"
    for _ in range(2):
        assert (await execute(world, world.flaky))["fallback_reason"] == "llm_error"
    assert (await call(world.keys["read"], "GET", path)).json()["consecutive_failures"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"action": "explode"},
        {},
        {"action": "reset", "extra": 1},
        {"action": "reset", "reason": "x" * 1001},
    ],
)
async def test_an_unknown_action_is_422(world: World, body: dict[str, Any]) -> None:
    path = f"/api/v1/agents/{world.agent}/breaker"
    response = await call(world.keys["operate"], "POST", path, body)
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "validation_error"


async def test_commanding_a_breaker_needs_operate(world: World) -> None:
    path = f"/api/v1/agents/{world.agent}/breaker"
    response = await call(world.keys["read"], "POST", path, {"action": "force_open"})
    assert response.status_code == 403
    assert response.json()["error"]["type"] == "permission_denied"
    assert (await call(world.keys["execute"], "GET", path)).status_code == 403
    assert (await call(world.keys["read"], "GET", path)).json()["state"] == "closed"


async def test_an_unknown_or_invisible_agents_breaker_is_404(world: World) -> None:
    ghost = "/api/v1/agents/ghost/breaker"
    assert (await call(world.keys["read"], "GET", ghost)).status_code == 404
    assert (
        await call(world.keys["operate"], "POST", ghost, {"action": "reset"})
    ).status_code == 404
    hidden = f"/api/v1/agents/{world.flaky}/breaker"
    limited = world.keys["agent-operator"]
    assert (await call(limited, "GET", hidden)).status_code == 404
    assert (await call(limited, "POST", hidden, {"action": "force_open"})).status_code == 404
    own = f"/api/v1/agents/{world.agent}/breaker"
    assert (await call(limited, "POST", own, {"action": "reset"})).status_code == 200


# --- deployments -----------------------------------------------------------------------------


async def test_deployments_list_with_their_breakers_and_load(world: World) -> None:
    response = await call(world.keys["read"], "GET", "/api/v1/deployments")
    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    items = {item["id"]: item for item in body["items"]}
    assert set(items) == {world.deployment, world.broken}
    m = items[world.deployment]
    assert m["model"] == "m"
    assert m["provider"] == "sim"
    assert m["upstream_model"] == "m-1"
    assert m["input_usd_per_mtok"] == 1
    assert m["output_usd_per_mtok"] == 2
    assert m["cached_input_usd_per_mtok"] is None
    assert m["max_concurrency"] == 64
    assert m["weight"] == 1
    assert m["enabled"] is True
    assert m["in_flight"] == 0
    assert m["breaker"]["key"] == f"deployment:{world.deployment}"
    assert m["breaker"]["state"] == "closed"
    assert items[world.broken]["input_usd_per_mtok"] is None  # unknown price


async def test_a_forced_open_deployment_takes_its_model_out_of_service(world: World) -> None:
    path = f"/api/v1/deployments/{world.deployment}/breaker"
    response = await call(world.keys["operate"], "POST", path, {"action": "force_open"})
    assert response.status_code == 200
    assert response.json()["state"] == "forced_open"
    listed = (await call(world.keys["read"], "GET", "/api/v1/deployments")).json()
    states = {item["id"]: item["breaker"]["state"] for item in listed["items"]}
    assert states[world.deployment] == "forced_open"
    result = await execute(world, world.agent)
    assert result["status"] == "degraded"
    assert result["fallback_reason"] == "circuit_open"
    assert await sync_to_async(
        AuditEvent.objects.filter(
            action="breaker_force_open", target_id=f"deployment:{world.deployment}"
        ).exists
    )()
    gauge = await _scraped("agent_deployment_breaker_state", deployment=str(world.deployment))
    assert gauge == 2

    await call(world.keys["operate"], "POST", path, {"action": "reset"})
    assert (await execute(world, world.agent))["status"] == "succeeded"


async def test_only_an_unrestricted_operator_commands_a_deployment(world: World) -> None:
    path = f"/api/v1/deployments/{world.deployment}/breaker"
    for key in ("read", "agent-operator"):
        response = await call(world.keys[key], "POST", path, {"action": "force_open"})
        assert response.status_code == 403, key
    missing = await call(
        world.keys["operate"], "POST", "/api/v1/deployments/999999/breaker", {"action": "reset"}
    )
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    listed = (await call(world.keys["read"], "GET", "/api/v1/deployments")).json()
    assert all(item["breaker"]["state"] == "closed" for item in listed["items"])


async def test_listing_deployments_needs_read(world: World) -> None:
    assert (await call(world.keys["execute"], "GET", "/api/v1/deployments")).status_code == 403
    limited = await call(world.keys["agent-operator"], "GET", "/api/v1/deployments")
    assert limited.status_code == 200  # shared by every agent: any reader sees them
