"""``WS /ws/dashboard/`` through the project's ASGI application (routing, session middleware,
origin check) with Channels' WebsocketCommunicator, on the real database and shared state
(Redis with REDIS_URL, process memory in embedded mode). Executions run through the real
execute endpoint and engine on the simulated provider."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connections
from django.utils import timezone

from agents import services
from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.models import ApiKey, ModelDeployment
from agents.runtime.state import agent_breaker_key, deployment_breaker_key
from budgets.models import Budget
from budgets.selectors import budget_spans
from console.asgi import application
from console.dashboard import dashboard_ticker
from incidents.services import incident_open
from tests.agents.api.test_queued import _post, drain_journal

pytestmark = pytest.mark.django_db(transaction=True)

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
  - {name: broken, kind: simulated, simulation: {latency_ms: 0, error_rate: 1, seed: 2}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: b, provider: broken, upstream_model: b-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: helper, model: m, max_tokens: 64, daily_budget_usd: 100}
  - {name: flaky, model: b, max_retries: 0, max_tokens: 64}
  - {name: other, model: m, max_tokens: 64}
budgets:
  - {scope: global, daily_limit_usd: 1000}
"""
AGENTS = ("flaky", "helper", "other")
PATH = "/ws/dashboard/"
ORIGIN = (b"origin", b"http://localhost")
EVIL = (b"origin", b"http://evil.example")


def _setup() -> dict[str, str]:
    config_apply(document=config_parse(DOC))
    return {
        "read": api_key_create(name="read", scopes=["read"]).plaintext,
        "operate": api_key_create(name="ops", scopes=["operate"]).plaintext,
        "admin": api_key_create(name="admin", scopes=["admin"]).plaintext,
        "execute": api_key_create(name="exec", scopes=["execute"]).plaintext,
        "other-reader": api_key_create(
            name="other-reader", scopes=["read", "execute"], agents=["other"]
        ).plaintext,
    }


@pytest.fixture
async def keys() -> AsyncIterator[dict[str, str]]:
    # No background drainer: the tests drain the journal when they want the records stored.
    engine = get_engine()
    engine.drainer = None
    created = await sync_to_async(_setup)()
    await engine.start()
    # The shared state outlives tests (Redis), and ids repeat across runs: closed breakers.
    for name in AGENTS:
        await engine.state.breaker_command(agent_breaker_key(name), "reset")
    async for deployment in ModelDeployment.objects.all():
        await engine.state.breaker_command(deployment_breaker_key(deployment.pk), "reset")
    yield created
    await dashboard_ticker().stop()
    await engine_shutdown()
    await drain_journal()
    await sync_to_async(connections.close_all)()


def _socket(*, key: str | None = None, headers: Any = (ORIGIN,)) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, PATH + (f"?key={key}" if key else ""), list(headers))


async def _open(key: str | None = None, **kwargs: Any) -> WebsocketCommunicator:
    socket = _socket(key=key, **kwargs)
    connected, code = await socket.connect()
    assert connected, code
    return socket


async def _snapshot(socket: WebsocketCommunicator) -> dict[str, Any]:
    # Generous: the first one comes at once or within a tick (about a second).
    message: dict[str, Any] = await socket.receive_json_from(timeout=10)
    assert message["type"] == "snapshot"
    return message


def _agent(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [a for a in snapshot["agents"] if a["name"] == name]
    assert len(found) == 1, [agent["name"] for agent in snapshot["agents"]]
    return found[0]


async def _execute(key: str, agent: str, times: int) -> list[dict[str, Any]]:
    bodies = []
    for _ in range(times):
        response = await _post(key, f"/api/v1/agents/{agent}/execute", {"input": "hi"})
        assert response.status_code == 200, response.content
        bodies.append(response.json())
    return bodies


async def _spent_micros(scope: str, target: str) -> int:
    """A budget's ``spent`` counter now (counters outlive tests in Redis: compare deltas)."""
    budgets = [
        b
        async for b in Budget.objects.select_related("agent", "api_key").filter(scope=scope)
        if b.target == target
    ]
    (span,) = budget_spans(budgets, now=timezone.now())
    usage = await get_engine().state.budget_usage((span.key,))
    return usage[span.key][0]


def _session_cookie(role: str | None = "viewer") -> bytes:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.test import Client

    user = get_user_model().objects.create_user(f"ops-{role}", password="pw-123456")
    if role is not None:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


# --- who may watch ---------------------------------------------------------------------------


async def test_a_read_key_gets_a_snapshot_of_every_agent_right_after_connecting(
    keys: dict[str, str],
) -> None:
    socket = await _open(keys["read"])
    snapshot = await _snapshot(socket)
    assert [agent["name"] for agent in snapshot["agents"]] == list(AGENTS)
    assert snapshot["seq"] >= 1
    assert abs(snapshot["at"] - timezone.now().timestamp()) < 60  # a server timestamp, in s
    assert snapshot["day"] == datetime.fromtimestamp(snapshot["at"], UTC).date().isoformat()
    assert snapshot["window_s"] == 60
    assert snapshot["problems"] == []
    assert snapshot["incidents"] == {"open": 0, "acknowledged": 0, "latest": None}
    helper = _agent(snapshot, "helper")
    assert helper["enabled"] is True
    assert helper["breaker"]["state"] == "closed"
    assert helper["running"] == helper["queued"] == 0
    assert helper["last_minute"]["requests"] == 0
    assert helper["last_minute"]["p50_latency_ms"] is None
    assert helper["budget"]["limit_usd"] == 100.0
    assert helper["budget"]["state"] == "ok"
    assert helper["deployments"] == [d["id"] for d in snapshot["deployments"] if d["model"] == "m"]
    assert snapshot["budget"]["limit_usd"] == 1000.0
    assert {d["model"] for d in snapshot["deployments"]} == {"m", "b"}
    assert all(d["breaker"]["state"] == "closed" for d in snapshot["deployments"])
    await socket.disconnect()


@pytest.mark.parametrize("persona", ["operate", "admin"])
async def test_operate_and_admin_keys_imply_read(keys: dict[str, str], persona: str) -> None:
    socket = await _open(keys[persona])
    assert len((await _snapshot(socket))["agents"]) == len(AGENTS)
    await socket.disconnect()


async def test_an_authorization_header_works_like_the_query_key(keys: dict[str, str]) -> None:
    header = (b"authorization", f"Bearer {keys['read']}".encode())
    socket = await _open(headers=[ORIGIN, header])
    assert (await _snapshot(socket))["type"] == "snapshot"
    await socket.disconnect()


@pytest.mark.parametrize(
    ("persona", "code"),
    [
        ("anonymous", 4401),  # no credentials
        ("forger", 4401),  # not a key
        ("execute", 4403),  # a key without read
    ],
)
async def test_a_refused_socket_never_opens(keys: dict[str, str], persona: str, code: int) -> None:
    key = {"anonymous": None, "forger": "bw_" + "x" * 46}.get(persona, keys.get(persona))
    socket = _socket(key=key)
    assert await socket.connect() == (False, code)
    await socket.disconnect()  # the client's side of the close: the application finishes
    assert not dashboard_ticker().running  # a refused socket starts nothing


async def test_a_console_user_watches_with_the_session_cookie(keys: dict[str, str]) -> None:
    cookie = await sync_to_async(_session_cookie)()
    socket = await _open(headers=[ORIGIN, (b"cookie", cookie)])
    snapshot = await _snapshot(socket)
    assert [agent["name"] for agent in snapshot["agents"]] == list(AGENTS)
    assert snapshot["budget"] is not None
    await socket.disconnect()


async def test_a_signed_in_user_without_a_console_role_is_refused(
    keys: dict[str, str],
) -> None:
    cookie = await sync_to_async(_session_cookie)(None)
    socket = _socket(headers=[ORIGIN, (b"cookie", cookie)])
    assert await socket.connect() == (False, 4403)
    await socket.disconnect()


async def test_a_session_socket_from_another_origin_is_refused(keys: dict[str, str]) -> None:
    cookie = await sync_to_async(_session_cookie)()
    for origin in (EVIL, None):
        headers = [(b"cookie", cookie)] + ([origin] if origin else [])
        socket = _socket(headers=headers)
        connected, _ = await socket.connect()
        assert not connected, origin
        await socket.disconnect()


async def test_a_key_socket_skips_the_origin_check(keys: dict[str, str]) -> None:
    # A key is no ambient credential: scripts and SDKs send no Origin, or any.
    for headers in ([EVIL], []):
        socket = await _open(keys["read"], headers=headers)
        await _snapshot(socket)
        await socket.disconnect()


async def test_a_foreign_page_with_a_cookie_and_a_key_watches_as_the_key_alone(
    keys: dict[str, str],
) -> None:
    # The key skips the origin check (it is no ambient credential), so the cookie must not
    # count: the socket sees what the key may see (one agent), not what the console user may.
    cookie = await sync_to_async(_session_cookie)()
    socket = await _open(keys["other-reader"], headers=[EVIL, (b"cookie", cookie)])
    snapshot = await _snapshot(socket)
    assert [agent["name"] for agent in snapshot["agents"]] == ["other"]
    assert snapshot["budget"] is None
    await socket.disconnect()


@pytest.mark.parametrize("origin", [ORIGIN, EVIL], ids=["same-origin", "foreign-origin"])
@pytest.mark.parametrize(
    "query",
    [
        "?key=bw_" + "x" * 46,  # not a key
        "?key=",  # an empty one
        "?k%65y=bw_" + "x" * 46,  # percent-encoded name: the same parameter
        "?key={read}&key={admin}",  # two different keys: neither
    ],
    ids=["bad-key", "empty-key", "encoded-name", "two-keys"],
)
async def test_a_bad_key_is_refused_even_with_a_valid_session_cookie(
    keys: dict[str, str], origin: tuple[bytes, bytes], query: str
) -> None:
    cookie = await sync_to_async(_session_cookie)()
    path = PATH + query.format(read=keys["read"], admin=keys["admin"])
    socket = WebsocketCommunicator(application, path, [origin, (b"cookie", cookie)])
    assert await socket.connect() == (False, 4401)
    await socket.disconnect()


async def test_a_bad_bearer_header_is_refused_even_with_a_valid_session_cookie(
    keys: dict[str, str],
) -> None:
    cookie = await sync_to_async(_session_cookie)()
    bad = (b"authorization", b"Bearer bw_" + b"x" * 46)
    socket = _socket(headers=[ORIGIN, (b"cookie", cookie), bad])
    assert await socket.connect() == (False, 4401)
    await socket.disconnect()


async def test_other_authorization_schemes_are_no_key_and_keep_the_origin_check(
    keys: dict[str, str],
) -> None:
    # A browser sends its cached Basic credentials (a proxy's) by itself: that is ambient too.
    cookie = await sync_to_async(_session_cookie)()
    basic = (b"authorization", b"Basic b3BzOnB3")
    refused = _socket(headers=[EVIL, (b"cookie", cookie), basic])
    connected, _ = await refused.connect()
    assert not connected
    await refused.disconnect()
    allowed = await _open(headers=[ORIGIN, (b"cookie", cookie), basic])
    assert len((await _snapshot(allowed))["agents"]) == len(AGENTS)
    await allowed.disconnect()


async def test_a_revoked_key_is_closed_within_a_tick(keys: dict[str, str]) -> None:
    socket = await _open(keys["read"])
    await _snapshot(socket)
    await ApiKey.objects.filter(name="read").aupdate(revoked_at=timezone.now())
    # What every process's config poll does within a second (a bare UPDATE sends no signal).
    await sync_to_async(get_engine().config.reload)(force=True)
    for _ in range(5):  # a snapshot may already be on its way; then the close
        output = await socket.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            break
        assert json.loads(output["text"])["type"] == "snapshot"
    assert output["code"] == 4401
    await socket.disconnect()


# --- what it shows -----------------------------------------------------------------------------


async def test_the_numbers_reflect_the_executions_that_ran(keys: dict[str, str]) -> None:
    helper_before = await _spent_micros("agent", "helper")
    global_before = await _spent_micros("global", "*")
    ran = await _execute(keys["admin"], "helper", 3) + await _execute(keys["admin"], "flaky", 2)
    assert [body["status"] for body in ran] == ["succeeded"] * 3 + ["degraded"] * 2
    await drain_journal()  # the records reach the database (the serve process drains itself)
    socket = await _open(keys["read"])
    snapshot = await _snapshot(socket)

    helper, flaky, other = (_agent(snapshot, name) for name in ("helper", "flaky", "other"))
    cost = sum(Decimal(str(body["cost_usd"])) for body in ran[:3])
    assert cost > 0
    counts = ("requests", "succeeded", "degraded", "failed", "cancelled", "errors", "cached")
    for window in ("last_minute", "today"):
        assert {name: helper[window][name] for name in counts} == {
            "requests": 3,
            "succeeded": 3,
            "degraded": 0,
            "failed": 0,
            "cancelled": 0,
            "errors": 0,
            "cached": 0,
        }
        assert Decimal(str(helper[window]["cost_usd"])) == pytest.approx(cost)
        assert flaky[window]["requests"] == flaky[window]["degraded"] == 2
        assert flaky[window]["errors"] == 2
        assert other[window]["requests"] == 0
    latency = helper["last_minute"]
    assert latency["p50_latency_ms"] is not None
    assert 0 <= latency["p50_latency_ms"] <= latency["p95_latency_ms"]
    assert flaky["last_minute"]["p95_latency_ms"] is not None
    assert other["last_minute"]["p50_latency_ms"] is None

    totals = snapshot["totals"]
    assert totals["last_minute"]["requests"] == totals["today"]["requests"] == 5
    assert totals["last_minute"]["errors"] == totals["today"]["errors"] == 2
    assert totals["running"] == totals["queued"] == totals["in_flight"] == 0

    # Budgets: the live counters, which the executions settled (rounded up to micro-USD each).
    spent = Decimal(str(helper["budget"]["spent_usd"])) - Decimal(helper_before) / 10**6
    assert cost <= spent <= cost + Decimal("0.000003")
    assert helper["budget"]["state"] == "ok"
    assert helper["budget"]["remaining_usd"] == pytest.approx(100 - helper["budget"]["spent_usd"])
    global_spent = Decimal(str(snapshot["budget"]["spent_usd"])) - Decimal(global_before) / 10**6
    assert global_spent == spent  # flaky cost nothing: every call failed
    await socket.disconnect()


async def test_a_breaker_command_shows_on_the_next_snapshots(keys: dict[str, str]) -> None:
    socket = await _open(keys["read"])
    assert _agent(await _snapshot(socket), "helper")["breaker"]["state"] == "closed"
    config = get_engine().config.agent("helper")
    assert config is not None
    await services.breaker_command(
        runtime=get_engine(),
        key=agent_breaker_key("helper"),
        action="force_open",
        config=config.breaker,
        actor="test",
    )
    for _ in range(5):  # one snapshot may have been computed before the command
        state = _agent(await _snapshot(socket), "helper")["breaker"]["state"]
        if state != "closed":
            break
    assert state == "forced_open"
    await socket.disconnect()


def _incidents() -> None:
    incident_open(
        kind="breaker_open",
        dedup_key="breaker:agent:helper",
        title="Circuit breaker open: agent helper",
        message="breaker opened",
        agent_name="helper",
    )
    incident_open(
        kind="ledger_drift",
        dedup_key="ledger_drift:global",
        title="Ledger drift",
        message="the ledger and the counter disagree",
    )


async def test_a_key_limited_to_some_agents_sees_only_those(keys: dict[str, str]) -> None:
    await _execute(keys["admin"], "helper", 2)
    await _execute(keys["other-reader"], "other", 1)
    await drain_journal()
    await sync_to_async(_incidents)()

    limited = await _open(keys["other-reader"])
    everything = await _open(keys["read"])
    mine, full = await _snapshot(limited), await _snapshot(everything)

    assert [agent["name"] for agent in mine["agents"]] == ["other"]
    assert mine["totals"]["today"]["requests"] == 1
    assert mine["totals"]["last_minute"]["requests"] == 1
    assert mine["incidents"] == {"open": 0, "acknowledged": 0, "latest": None}
    assert mine["budget"] is None  # the global budget sums everyone's spend
    assert "helper" not in json.dumps(mine)

    assert [agent["name"] for agent in full["agents"]] == list(AGENTS)
    assert full["totals"]["today"]["requests"] == 3
    assert full["incidents"]["open"] == 2
    assert full["incidents"]["latest"]["title"] == "Ledger drift"
    assert full["budget"] is not None
    await limited.disconnect()
    await everything.disconnect()


# --- one ticker per process --------------------------------------------------------------------


async def test_two_sockets_share_one_ticker_which_stops_when_both_leave(
    keys: dict[str, str],
) -> None:
    ticker = dashboard_ticker()
    assert not ticker.running
    first = await _open(keys["read"])
    second = await _open(keys["other-reader"])
    assert ticker.running
    assert ticker.subscribers == 2
    seen: dict[int, list[dict[str, Any]]] = {}
    for _ in range(3):
        for socket in (first, second):
            snapshot = await _snapshot(socket)
            seen.setdefault(snapshot["seq"], []).append(snapshot)
    # One computing task for both sockets; every message is one of its snapshots, numbered as
    # it made them, each rendered for what that socket's viewer may see.
    assert ticker.starts == 1
    tasks = [t for t in asyncio.all_tasks() if t.get_name() == "bw-dashboard-ticker"]
    assert len(tasks) == 1
    assert max(seen) <= ticker.computed
    for snapshots in seen.values():
        assert len({len(s["agents"]) for s in snapshots}) == len(snapshots)  # 3 vs 1

    await first.disconnect()
    assert ticker.running
    assert ticker.subscribers == 1
    await _snapshot(second)  # the other socket goes on
    await second.disconnect()
    assert ticker.subscribers == 0
    assert not ticker.running

    again = await _open(keys["read"])
    await _snapshot(again)
    assert ticker.starts == 2
    await again.disconnect()
    assert not ticker.running
