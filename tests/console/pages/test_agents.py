"""/agents/ and /agents/{name}/: the table from hand-built rollups, its totals, the CSV the API
serves, window errors, the config edit (review, save, errors, audit) and the breaker actions,
with every role check (forged POSTs get 403 and change nothing)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html import unescape
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group, User
from django.test import AsyncClient, Client
from django.utils import timezone

from agents.access.services import api_key_create
from agents.config.apply import config_apply, config_parse
from agents.engine import engine_shutdown, get_engine
from agents.models import Agent, Execution
from agents.runtime.state import BreakerConfig, agent_breaker_key
from budgets.models import TrafficRollup
from budgets.selectors import latency_percentile
from core.models import AuditEvent
from tests.console.pages.conftest import ClientAs

DOC = """
providers:
  - {name: sim, kind: simulated}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: m2, provider: sim, upstream_model: m-2, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: alpha, model: m, fallback_models: [m2], daily_budget_usd: 50}
  - {name: beta, model: m}
  - {name: idle, model: m, enabled: false, description: resting}
"""


def _hour() -> datetime:
    now = int(timezone.now().timestamp())
    return datetime.fromtimestamp(now // 3600 * 3600, UTC)


def _rollup(agent: str, start: datetime, **values: Any) -> None:
    TrafficRollup.objects.create(step_s=3600, start=start, agent_name=agent, **values)


@pytest.fixture
def world(db: None, client_as: ClientAs) -> dict[str, Client]:
    config_apply(document=config_parse(DOC))
    return {role: client_as(role, name=role) for role in ("viewer", "operator", "admin")}


def _traffic() -> None:
    hour = _hour()
    _rollup(
        "alpha",
        hour,
        requests=10,
        succeeded=8,
        failed=2,
        cached=2,
        fallbacks=1,
        cost_usd=Decimal("0.50"),
        saved_usd=Decimal("0.10"),
        latency_sum_ms=1000,
        latency_count=10,
        latency_buckets=[10],
    )
    _rollup(
        "beta",
        hour - timedelta(hours=1),
        requests=30,
        succeeded=30,
        cost_usd=Decimal("1.25"),
        latency_sum_ms=90000,
        latency_count=30,
        latency_buckets=[0, 0, 0, 0, 0, 0, 0, 0, 30],
    )


def _cell(html: str, agent: str, name: str) -> str:
    row = re.search(rf'<tr data-agent="{agent}">(.*?)</tr>', html, re.S)
    assert row is not None, agent
    return _field(row.group(1), name)


def _field(html: str, name: str) -> str:
    cell = re.search(rf'data-field="{name}">(.*?)</td>', html, re.S)
    assert cell is not None, name
    return re.sub(r"<[^>]+>", "", cell.group(1)).strip()


def _total(html: str, name: str) -> str:
    foot = re.search(r"<tfoot>(.*?)</tfoot>", html, re.S)
    assert foot is not None
    return _field(foot.group(1), name)


# --- the table -----------------------------------------------------------------------------


def test_the_table_shows_each_agents_figures_from_the_rollups(world: dict[str, Client]) -> None:
    _traffic()
    html = world["viewer"].get("/agents/?window=24h").content.decode()
    assert _cell(html, "alpha", "success_rate") == "80%"
    assert _cell(html, "alpha", "avg_latency_ms") == "100 ms"
    assert _cell(html, "alpha", "cache_hit_rate") == "20%"
    assert _cell(html, "alpha", "fallback_rate") == "10%"
    assert _cell(html, "alpha", "saved_usd") == "$0.10"
    assert _cell(html, "beta", "success_rate") == "100%"
    assert _cell(html, "beta", "avg_latency_ms") == "3,000 ms"
    assert _cell(html, "alpha", "budget_used") == "$0.00 / $50.00 (0%)"
    assert _cell(html, "beta", "budget_used") == "no daily budget"


def test_the_totals_row_adds_up_and_takes_p95_from_the_merged_histograms(
    world: dict[str, Client],
) -> None:
    _traffic()
    html = world["viewer"].get("/agents/").content.decode()
    assert _total(html, "success_rate") == "95%"  # 38 / 40, not the mean of 80% and 100%
    assert _total(html, "avg_latency_ms") == "2,275 ms"  # 91000 ms / 40, not (100 + 3000) / 2
    assert _total(html, "cache_hit_rate") == "5%"
    assert _total(html, "fallback_rate") == "2.5%"
    assert _total(html, "saved_usd") == "$0.10"
    merged = [10, 0, 0, 0, 0, 0, 0, 0, 30]
    p95 = latency_percentile(merged, 0.95)
    alpha_p95 = latency_percentile([10], 0.95)
    beta_p95 = latency_percentile([0] * 8 + [30], 0.95)
    assert p95 is not None
    assert alpha_p95 is not None
    assert beta_p95 is not None
    assert p95 != (alpha_p95 + beta_p95) / 2
    assert _total(html, "p95_latency_ms") == f"{p95:,.0f} ms"


def test_agents_without_traffic_are_listed_with_zeros_and_disabled_ones_are_marked(
    world: dict[str, Client],
) -> None:
    html = world["viewer"].get("/agents/").content.decode()
    assert _cell(html, "idle", "requests_per_day") == "0"
    assert _cell(html, "idle", "success_rate") == "\u2013"
    row = re.search(r'<tr data-agent="idle">(.*?)</tr>', html, re.S)
    assert row is not None
    assert 'class="pill disabled"' in row.group(1)
    assert "<tfoot>" not in html  # nothing ran: no totals to show
    assert 'data-sparkline="idle"' in html
    assert '"idle": {"step_s": 3600' in html


def test_with_no_agents_the_page_says_how_to_load_them(db: None, client_as: ClientAs) -> None:
    client = client_as("viewer")
    html = client.get("/agents/").content.decode()
    assert "manage.py apply" in html
    assert "POST /api/v1/agents" in html


@pytest.mark.parametrize("path", ["/agents/?window=2d", "/agents/stats.csv?window=2d"])
def test_a_bad_window_is_a_clear_400(world: dict[str, Client], path: str) -> None:
    response = world["viewer"].get(path)
    assert response.status_code == 400
    assert "window: '2d' is not one of 1h, 24h, 7d, 30d" in unescape(response.content.decode())


@pytest.mark.django_db(transaction=True)
async def test_the_csv_download_is_the_apis_csv_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, client_as: ClientAs
) -> None:
    # Per-day figures divide by the time until now: both reads see the same instant.
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)

    def setup() -> tuple[Client, str]:
        config_apply(document=config_parse(DOC))
        _traffic()
        return client_as("viewer"), api_key_create(name="r", scopes=["read"]).plaintext

    viewer, key = await sync_to_async(setup)()
    try:
        for window in ("7d", "1h", "24h"):  # the last one has the traffic
            api = await AsyncClient().get(
                f"/api/v1/stats/agents?window={window}&format=csv",
                headers={"Authorization": f"Bearer {key}"},
            )
            mine = await sync_to_async(viewer.get)(f"/agents/stats.csv?window={window}")
            assert api.status_code == mine.status_code == 200
            assert mine.content == api.content
            assert mine["Content-Type"] == api["Content-Type"]
            assert mine["Content-Disposition"] == api["Content-Disposition"]
        assert b"alpha" in mine.content
    finally:
        await engine_shutdown()


def test_the_table_costs_the_same_queries_whatever_the_number_of_agents(
    world: dict[str, Client], django_assert_max_num_queries: Any
) -> None:
    _traffic()
    client = world["viewer"]
    client.get("/agents/")  # the session's first read
    with django_assert_max_num_queries(10) as few:
        assert client.get("/agents/").status_code == 200
    config_apply(
        document=config_parse(
            DOC
            + "".join(f"  - {{name: extra{i}, model: m, daily_budget_usd: 5}}\n" for i in range(25))
        )
    )
    for i in range(25):
        _rollup(f"extra{i}", _hour(), requests=1, succeeded=1, latency_buckets=[1])
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get("/agents/").status_code == 200


# --- one agent -----------------------------------------------------------------------------


def test_an_unknown_agent_is_a_404_page(world: dict[str, Client]) -> None:
    response = world["viewer"].get("/agents/nobody/")
    assert response.status_code == 404
    assert "agent 'nobody' does not exist" in unescape(response.content.decode())


def test_a_viewer_sees_the_config_as_export_writes_it_and_no_edit_or_toggles(
    world: dict[str, Client],
) -> None:
    html = world["viewer"].get("/agents/alpha/").content.decode()
    assert "name: alpha\n" in html
    assert "daily_budget_usd: 50\n" in html
    assert "<textarea" not in html
    assert 'name="action"' not in html
    assert "Deployments" in html
    assert "<code>m2</code>" in html


def test_an_operator_sees_the_breaker_actions_but_no_edit(world: dict[str, Client]) -> None:
    html = world["operator"].get("/agents/alpha/").content.decode()
    for action in ("force_open", "force_close", "reset", "disable"):
        assert f'value="{action}"' in html
    assert 'data-confirm="Change the breaker of agent alpha?' in html
    assert 'name="reason" required' in html
    assert "<textarea" not in html


def test_the_agent_page_costs_the_same_queries_whatever_the_number_of_executions(
    world: dict[str, Client], django_assert_max_num_queries: Any
) -> None:
    client = world["admin"]
    client.get("/agents/alpha/")
    with django_assert_max_num_queries(12) as few:
        assert client.get("/agents/alpha/").status_code == 200
    Execution.objects.bulk_create(
        Execution(id=uuid.uuid4(), agent_name="alpha", status="succeeded", input=[])
        for _ in range(60)
    )
    with django_assert_max_num_queries(len(few.captured_queries)):
        html = client.get("/agents/alpha/").content.decode()
    assert len(re.findall(r'href="/executions/[0-9a-f-]{36}/"', html)) == 20


# --- the config edit -----------------------------------------------------------------------


def _edited(client: Client) -> str:
    html = client.get("/agents/alpha/").content.decode()
    match = re.search(r'<textarea id="config-text" name="config"[^>]*>(.*?)</textarea>', html, re.S)
    assert match is not None
    return unescape(match.group(1))


def test_review_shows_the_diff_and_saves_nothing(world: dict[str, Client]) -> None:
    admin = world["admin"]
    text = _edited(admin).replace("max_retries: 3", "max_retries: 1")
    response = admin.post("/agents/alpha/config/", {"step": "review", "config": text})
    html = response.content.decode()
    assert response.status_code == 200
    assert '<span class="del">-max_retries: 3</span>' in html
    assert '<span class="add">+max_retries: 1</span>' in html
    assert Agent.objects.get(name="alpha").max_retries == 3
    assert not AuditEvent.objects.filter(action="agent_update").exists()


def test_save_writes_the_config_and_audits_it(world: dict[str, Client]) -> None:
    admin = world["admin"]
    text = _edited(admin).replace("max_retries: 3", "max_retries: 1")
    review = admin.post("/agents/alpha/config/", {"step": "review", "config": text})
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]+)"', review.content.decode())
    assert fingerprint is not None
    response = admin.post(
        "/agents/alpha/config/",
        {"step": "save", "config": text, "fingerprint": fingerprint.group(1)},
        follow=True,
    )
    assert "Saved the config of agent alpha." in unescape(response.content.decode())
    assert Agent.objects.get(name="alpha").max_retries == 1
    event = AuditEvent.objects.get(action="agent_update", actor="user:admin")
    assert event.after is not None
    assert event.after["max_retries"] == 1


def test_a_field_left_out_returns_to_its_default_as_apply_does(world: dict[str, Client]) -> None:
    admin = world["admin"]
    Agent.objects.filter(name="alpha").update(description="was here")
    text = _edited(admin).replace("description: was here\n", "")
    review = admin.post("/agents/alpha/config/", {"step": "review", "config": text})
    fingerprint = re.search(r'name="fingerprint" value="([0-9a-f]+)"', review.content.decode())
    assert fingerprint is not None
    admin.post(
        "/agents/alpha/config/",
        {"step": "save", "config": text, "fingerprint": fingerprint.group(1)},
    )
    assert Agent.objects.get(name="alpha").description == ""


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_retries: 3", "max_retries: many"), "max_retries:"),
        (("model: m\n", "model: nowhere\n"), "model:"),
        (("name: alpha", "name: gamma"), "name: cannot be changed"),
        (("name: alpha", "name: [alpha"), "config: not valid YAML (line"),
    ],
)
def test_a_bad_config_names_the_field_and_saves_nothing(
    world: dict[str, Client], change: tuple[str, str], message: str
) -> None:
    admin = world["admin"]
    text = _edited(admin).replace(*change)
    for step in ("review", "save"):
        response = admin.post(
            "/agents/alpha/config/", {"step": step, "config": text, "fingerprint": "x"}
        )
        html = response.content.decode()
        if step == "review":
            assert response.status_code == 422
            assert "Nothing was saved" in html
            assert message in html
    assert Agent.objects.get(name="alpha").model == "m"
    assert not AuditEvent.objects.filter(action="agent_update").exists()


def test_save_after_someone_else_changed_the_agent_asks_for_a_new_review(
    world: dict[str, Client],
) -> None:
    admin = world["admin"]
    text = _edited(admin).replace("max_retries: 3", "max_retries: 1")
    stale = re.search(
        r'name="fingerprint" value="([0-9a-f]+)"',
        admin.post("/agents/alpha/config/", {"step": "review", "config": text}).content.decode(),
    )
    assert stale is not None
    Agent.objects.filter(name="alpha").update(max_tokens=99)
    response = admin.post(
        "/agents/alpha/config/",
        {"step": "save", "config": text, "fingerprint": stale.group(1)},
    )
    assert response.status_code == 409
    assert "review it again" in response.content.decode()
    assert Agent.objects.get(name="alpha").max_retries == 3


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_a_forged_config_post_below_admin_is_403_and_changes_nothing(
    world: dict[str, Client], role: str
) -> None:
    text = _edited(world["admin"]).replace("max_retries: 3", "max_retries: 1")
    response = world[role].post("/agents/alpha/config/", {"step": "save", "config": text})
    assert response.status_code == 403
    assert Agent.objects.get(name="alpha").max_retries == 3


# --- breaker actions -----------------------------------------------------------------------


@pytest.fixture
async def live_world() -> AsyncIterator[dict[str, AsyncClient]]:
    def setup() -> dict[str, User]:
        config_apply(document=config_parse(DOC.replace("alpha", f"b{tag}")))
        users = {}
        for role in ("viewer", "operator"):
            user = User.objects.create_user(f"{role}-{tag}", password="pw-for-tests-1")
            user.groups.add(Group.objects.get_or_create(name=role)[0])
            users[role] = user
        return users

    tag = uuid.uuid4().hex[:6]
    users = await sync_to_async(setup)()
    clients: dict[str, Any] = {"tag": f"b{tag}"}
    for role, user in users.items():
        client = AsyncClient()
        await client.aforce_login(user)
        clients[role] = client
    yield clients
    await get_engine().state.breaker_command(agent_breaker_key(f"b{tag}"), "reset")
    await engine_shutdown()


async def _state(name: str) -> str:
    snapshot = await get_engine().state.breaker_snapshot(agent_breaker_key(name), BreakerConfig())
    return snapshot.state.value


@pytest.mark.django_db(transaction=True)
async def test_force_open_and_reset_from_the_page_change_the_breaker_and_audit(
    live_world: dict[str, Any],
) -> None:
    name = live_world["tag"]
    operator = live_world["operator"]
    response = await operator.post(
        f"/agents/{name}/breaker/", {"action": "force_open", "reason": "provider is down"}
    )
    assert response.status_code == 302
    assert response["Location"] == f"/agents/{name}/#breakers"
    assert await _state(name) == "forced_open"
    event = await AuditEvent.objects.aget(action="breaker_force_open")
    assert (event.actor, event.target_id, event.reason) == (
        f"user:operator-{name[1:]}",
        agent_breaker_key(name),
        "provider is down",
    )
    page = await operator.get(f"/agents/{name}/")
    assert "the breaker is forced_open" in unescape(page.content.decode())
    await operator.post(f"/agents/{name}/breaker/", {"action": "reset", "reason": "recovered"})
    assert await _state(name) == "closed"


@pytest.mark.django_db(transaction=True)
async def test_a_breaker_action_without_a_reason_changes_nothing(
    live_world: dict[str, Any],
) -> None:
    name = live_world["tag"]
    response = await live_world["operator"].post(
        f"/agents/{name}/breaker/", {"action": "force_open", "reason": " "}, follow=True
    )
    assert "nothing changed: reason: say why" in unescape(response.content.decode())
    assert await _state(name) == "closed"
    assert not await AuditEvent.objects.filter(action="breaker_force_open").aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_viewers_forged_breaker_post_is_403_and_changes_nothing(
    live_world: dict[str, Any],
) -> None:
    name = live_world["tag"]
    viewer = live_world["viewer"]
    deployment = await sync_to_async(lambda: get_deployment_id("m"))()
    for path in (f"/agents/{name}/breaker/", f"/agents/{name}/deployments/{deployment}/breaker/"):
        response = await viewer.post(path, {"action": "force_open", "reason": "forged"})
        assert response.status_code == 403
    assert await _state(name) == "closed"
    assert not await AuditEvent.objects.filter(action="breaker_force_open").aexists()


@pytest.mark.django_db(transaction=True)
async def test_a_deployment_of_the_agent_is_commanded_from_its_page(
    live_world: dict[str, Any],
) -> None:
    name = live_world["tag"]
    deployment = await sync_to_async(lambda: get_deployment_id("m2"))()
    operator = live_world["operator"]
    path = f"/agents/{name}/deployments/{deployment}/breaker/"
    try:
        await operator.post(path, {"action": "force_open", "reason": "maintenance"})
        page = (await operator.get(f"/agents/{name}/")).content.decode()
        assert f'data-deployment-breaker="{deployment}">forced_open' in page
        assert await AuditEvent.objects.filter(
            action="breaker_force_open", target_id=f"deployment:{deployment}"
        ).aexists()
    finally:
        await operator.post(path, {"action": "reset", "reason": "done"})
    other = await sync_to_async(lambda: get_deployment_id("m2") + 1000)()
    response = await operator.post(
        f"/agents/{name}/deployments/{other}/breaker/", {"action": "reset", "reason": "x"}
    )
    assert response.status_code == 404


def get_deployment_id(model: str) -> int:
    from agents.models import ModelDeployment

    return int(ModelDeployment.objects.get(name=model).pk)
