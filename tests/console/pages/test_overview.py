"""The overview page ``/`` (Django test client): figures, window, budgets, breakers, incidents,
empty states, the results partial and the number of queries (console/pages/overview.py)."""

from __future__ import annotations

import html as html_module
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from agents.backends import on_state_sync
from agents.models import Agent
from agents.runtime.state import agent_breaker_key
from budgets.rollups import traffic_rollups_refresh
from budgets.series import Series, SeriesPoint
from console.pages import overview
from incidents.services import incident_open
from tests.budgets.conftest import budget, execution

pytestmark = pytest.mark.django_db

LIVE_METRICS = (
    "requests_total",
    "success_rate",
    "p95_latency_ms",
    "spend_today_usd",
    "open_incidents",
    "breakers_open",
)
ALSO = (
    "requests_per_day",
    "availability",
    "avg_latency_ms",
    "window_p95_latency_ms",
    "cost_per_day_usd",
    "fallbacks",
    "spend_forecast_usd",
)
# Half past an hour that has passed: "today", "the last minute" and "this hour" are unambiguous.
NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(overview, "clock", lambda: NOW)


def traffic() -> None:
    """Two agents; today: 3 succeeded (one by a fallback model), 1 degraded, 1 failed, 1 in the
    last minute; spend $0.05 in all; the rollups refreshed."""
    Agent.objects.create(name="support", model="m-main")
    Agent.objects.create(name="writer", model="m-back")
    for minutes, status, agent, cost in (
        (25, "succeeded", "support", "0.01"),
        (20, "succeeded", "writer", "0.01"),
        (15, "degraded", "support", "0.005"),
        (10, "failed", "support", "0.005"),
    ):
        execution(at=NOW - timedelta(minutes=minutes), status=status, agent=agent, cost=cost)
    execution(
        at=NOW - timedelta(seconds=20),
        agent="support",
        cost="0.02",
        latency_ms=250,
        fallback_used=True,
        fallback_reason="timeout",
    )
    traffic_rollups_refresh(now=NOW, minutes=60)


def metric(html: str, name: str) -> str:
    found = re.search(rf'data-metric="{name}"[^>]*>([^<]*)<', html)
    assert found is not None, f"no data-metric={name}"
    return found.group(1).strip()


def island(html: str) -> dict[str, Any]:
    found = re.search(r'<div id="overview-data" hidden data-json="(.*?)"></div>', html)
    assert found is not None
    data: dict[str, Any] = json.loads(html_module.unescape(found.group(1)))
    return data


# --- access --------------------------------------------------------------------------------


def test_a_signed_out_visitor_is_sent_to_sign_in(client: Client) -> None:
    response = client.get("/?window=7d")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=/")


def test_a_user_without_a_console_role_is_refused(client: Client) -> None:
    client.force_login(User.objects.create_user("nobody", password="a-long-passphrase-1"))
    assert client.get("/").status_code == 403
    assert client.get("/overview/results/").status_code == 403


# --- figures -------------------------------------------------------------------------------


def test_the_page_shows_every_contract_figure_from_todays_traffic(viewer: Client) -> None:
    traffic()
    html = viewer.get("/").content.decode()
    assert {name: metric(html, name) for name in LIVE_METRICS} == {
        "requests_total": "5",
        "success_rate": "60%",
        "p95_latency_ms": metric(html, "p95_latency_ms"),  # a histogram bucket's bound
        "spend_today_usd": "$0.05",
        "open_incidents": "0",
        "breakers_open": "0",
    }
    assert metric(html, "p95_latency_ms").endswith(" ms")
    assert metric(html, "requests_last_minute") == "1"


def test_the_window_figures_come_from_the_rollups(viewer: Client) -> None:
    traffic()
    html = viewer.get("/?window=1h").content.decode()
    for name in ALSO:
        metric(html, name)
    assert metric(html, "window_requests") == "5"
    assert metric(html, "availability") == "60%"  # 3 answered of 5, none cancelled
    assert metric(html, "fallbacks") == "2"  # the degraded one and the fallback model's
    assert metric(html, "requests_per_day") == f"{5 / (59 / 1440):,.0f}"


def test_the_window_defaults_to_24h_and_the_selector_offers_the_four(viewer: Client) -> None:
    html = viewer.get("/").content.decode()
    assert 'data-window="24h"' in html
    assert re.findall(r'<option value="([^"]+)"', html) == ["1h", "24h", "7d", "30d"]
    assert '<option value="24h" selected>' in html
    assert '<label for="overview-window">' in html


def test_a_bad_window_is_named_and_the_page_shows_24h(viewer: Client) -> None:
    response = viewer.get("/?window=2w")
    assert response.status_code == 400
    html = response.content.decode()
    assert "window: &#x27;2w&#x27; is not one of 1h, 24h, 7d, 30d: showing 24h." in html
    assert 'data-window="24h"' in html


def test_the_results_partial_serves_the_window_asked_for(viewer: Client) -> None:
    traffic()
    response = viewer.get("/overview/results/?window=7d")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="results" id="overview-results"')
    assert 'hx-trigger="every 30s, bw:resync from:body"' in html
    assert "<html" not in html
    data = island(html)
    assert (data["window"], data["step_s"], len(data["at"])) == ("7d", 3600, 168)
    assert sum(data["requests"]) == 5
    assert sum(data["errors"]) == 2


def test_the_results_partial_refuses_a_bad_window(viewer: Client) -> None:
    response = viewer.get("/overview/results/?window=1y")
    assert response.status_code == 400
    assert response.content.decode() == "window: '1y' is not one of 1h, 24h, 7d, 30d"


def test_the_charts_island_holds_the_series_and_todays_spend(viewer: Client) -> None:
    traffic()
    data = island(viewer.get("/").content.decode())
    assert (len(data["at"]), data["step_s"]) == (24, 3600)
    assert (sum(data["requests"]), sum(data["fallbacks"])) == (5, 2)
    assert any(p is not None for p in data["p95_ms"])
    spend = data["spend"]
    assert spend["spent_usd"] == pytest.approx(0.05)
    assert spend["cumulative"][-1] == pytest.approx(0.05)
    assert spend["at"][-1] == NOW.timestamp()
    assert spend["day_end"] - spend["day_start"] == 86400


# --- budgets, breakers, incidents ----------------------------------------------------------


def test_spend_is_set_against_the_global_daily_budget_when_there_is_one(viewer: Client) -> None:
    traffic()
    budget(scope="agent", agent=Agent.objects.get(name="support"), limit="3")
    budget(scope="global", limit="20")
    html = viewer.get("/").content.decode()
    assert metric(html, "daily_budget_usd") == "$20.00"
    assert "global daily budget" in html
    assert island(html)["spend"]["limit_usd"] == 20.0


def test_without_a_global_budget_spend_is_set_against_the_agents_budgets_summed(
    viewer: Client,
) -> None:
    traffic()
    budget(scope="agent", agent=Agent.objects.get(name="support"), limit="3")
    budget(scope="agent", agent=Agent.objects.get(name="writer"), limit="4.5")
    html = viewer.get("/").content.decode()
    assert metric(html, "daily_budget_usd") == "$7.50"
    assert "sum of 2 agent daily budgets" in html


def test_no_daily_budget_is_said_so(viewer: Client) -> None:
    traffic()
    html = viewer.get("/").content.decode()
    assert "no daily budget set" in html
    assert island(html)["spend"]["limit_usd"] is None


def test_an_open_breaker_is_counted_and_links_to_its_agent(viewer: Client) -> None:
    traffic()
    key = agent_breaker_key("writer")
    on_state_sync(lambda store: store.breaker_command(key, "force_open"))
    try:
        html = viewer.get("/").content.decode()
    finally:
        on_state_sync(lambda store: store.breaker_command(key, "reset"))
    assert metric(html, "breakers_open") == "1"
    assert '<a href="/agents/writer/">writer</a> <span class="pill forced_open">' in html


def test_unresolved_incidents_are_counted_with_a_link_to_the_newest(viewer: Client) -> None:
    traffic()
    incident_open(kind="error_rate", dedup_key="a", title="Errors up", message="m")
    newest, _ = incident_open(
        kind="cost_spike", dedup_key="b", title="Spend spike", message="m", agent_name="support"
    )
    html = viewer.get("/").content.decode()
    assert metric(html, "open_incidents") == "2"
    assert f'<a href="/incidents/{newest.pk}/">Spend spike</a>' in html


# --- empty states --------------------------------------------------------------------------


def test_with_no_agents_the_page_says_how_to_load_the_demo(viewer: Client) -> None:
    html = viewer.get("/").content.decode()
    assert 'data-empty="agents"' in html
    assert "python manage.py apply -f demo/breakwater.yaml" in html
    assert "make run" in html
    for name in LIVE_METRICS:
        metric(html, name)


def test_with_agents_but_no_traffic_the_page_says_how_to_send_some(viewer: Client) -> None:
    Agent.objects.create(name="support", model="m-main")
    html = viewer.get("/").content.decode()
    assert 'data-empty="agents"' not in html
    assert 'data-empty="traffic"' in html
    assert metric(html, "requests_total") == "0"


# --- the live figures and the forecast -----------------------------------------------------


def test_the_live_figures_read_the_snapshot_the_socket_sends() -> None:
    message: dict[str, Any] = {
        "totals": {
            "today": {"requests": 8, "succeeded": 6, "errors": 2, "cost_usd": 1.5},
            "last_minute": {"requests": 2, "p95_latency_ms": 900.0},
            "running": 1,
        },
        "agents": [
            {
                "name": "a",
                "deployments": [7],
                "breaker": {"state": "closed"},
                "budget": {"limit_usd": 2.0, "spent_usd": 1.0, "forecast_usd": 3.0},
            },
            {
                "name": "b",
                "deployments": [7],
                "breaker": {"state": "half_open"},
                "budget": {"limit_usd": 1.0, "spent_usd": 0.5, "forecast_usd": 0.5},
            },
        ],
        "deployments": [{"id": 7, "model": "m", "provider": "p", "breaker": {"state": "open"}}],
        "incidents": {"open": 1, "acknowledged": 2, "latest": None},
        "budget": None,
        "problems": [],
    }
    figures = overview.live_figures(message)
    assert figures["success_rate"] == 0.75
    assert figures["open_incidents"] == 3
    assert figures["breakers_open"] == 2
    assert [b["agents"] for b in figures["open_breakers"]] == [["b"], ["a", "b"]]
    assert figures["budget"] == overview.BudgetRef(
        "agents", "sum of 2 agent daily budgets", 3.0, 1.5, 3.5
    )
    message["deployments"][0]["breaker"] = None  # the shared state did not answer
    assert overview.live_figures(message)["breakers_open"] is None


def test_the_spend_forecast_runs_the_trailing_rate_to_midnight() -> None:
    day = datetime(2026, 3, 11, tzinfo=UTC)
    now = day + timedelta(hours=10, minutes=30)

    def point(hour: int, cost: float) -> SeriesPoint:
        at = (day + timedelta(hours=hour)).timestamp()
        return SeriesPoint(at, 1, 1, 0, 0, 0, 0, cost, None, None)

    yesterday = SeriesPoint(
        (day - timedelta(hours=1)).timestamp(), 1, 1, 0, 0, 0, 0, 99.0, None, None
    )
    series = Series("24h", 3600, [yesterday, point(8, 1.0), point(9, 0.6), point(10, 0.3)])
    spend = overview.spend_today(series, now, 10.0)
    assert spend["spent_usd"] == pytest.approx(1.9)
    # since 09:00: $0.9 in 90 minutes = $0.6/h; 13.5 h left
    assert spend["rate_usd_per_hour"] == pytest.approx(0.6)
    assert spend["forecast_usd"] == pytest.approx(1.9 + 0.6 * 13.5)
    assert spend["cumulative"] == pytest.approx([0.0, 1.0, 1.6, 1.9])
    assert spend["at"][-1] == now.timestamp()
    with pytest.raises(ValueError, match="hourly series"):
        overview.spend_today(Series("1h", 60, []), now, None)


# --- queries -------------------------------------------------------------------------------


@pytest.mark.parametrize("with_data", [False, True], ids=["empty", "data"])
@pytest.mark.parametrize(
    ("path", "most"),
    [("/", 14), ("/?window=7d", 15), ("/overview/results/?window=24h", 14)],
)
def test_the_page_and_its_partial_cost_a_fixed_number_of_queries(
    viewer: Client, django_assert_max_num_queries: Any, path: str, most: int, with_data: bool
) -> None:
    if with_data:
        traffic()
        for n in range(30):
            Agent.objects.create(name=f"more-{n}", model="m-main")
            execution(at=NOW - timedelta(minutes=n), agent=f"more-{n}", cost=str(Decimal("0.001")))
        budget(scope="global", limit="20")
        incident_open(kind="error_rate", dedup_key="x", title="Errors", message="m")
        traffic_rollups_refresh(now=NOW, minutes=60)
    with django_assert_max_num_queries(most):
        response = viewer.get(path)
    assert response.status_code == 200
