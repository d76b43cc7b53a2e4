"""``/slos/`` through the Django test client: the table of SLIs, budgets and burn rates coloured
by the alert conditions, the chart data, the role, a fixed number of queries."""

from __future__ import annotations

import html
import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client

from agents.models import Agent
from budgets.rollups import traffic_rollups_refresh
from console.pages import slos
from tests.budgets.conftest import NOW, execution

pytestmark = pytest.mark.django_db
MINUTE = NOW.replace(minute=37, second=20)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slos, "clock", lambda: MINUTE)


def many(count: int, *, minutes_ago: float, **fields: Any) -> None:
    for _ in range(count):
        execution(at=MINUTE - timedelta(minutes=minutes_ago), **fields)


def burning() -> None:
    """support: 20% failing in the last minutes (a fast burn); billing: fine, but slow."""
    Agent.objects.create(name="support", model="m", slo_availability=0.99)
    Agent.objects.create(name="billing", model="m", slo_latency_ms=500)
    many(80, minutes_ago=2)
    many(20, minutes_ago=2, status="failed")
    many(90, minutes_ago=3, agent="billing", latency_ms=100)
    many(10, minutes_ago=3, agent="billing", latency_ms=900)
    traffic_rollups_refresh(now=MINUTE, minutes=60)


def _row(page: str, agent: str, sli: str) -> str:
    start = page.index(f'<tbody data-agent="{agent}">')
    row = page.index(f'<tr data-sli="{sli}">', start)
    return page[row : page.index("</tr>", row)]


def test_each_agent_has_a_row_per_sli_with_windows_budget_burn_rates_and_state(
    viewer: Client,
) -> None:
    burning()
    page = viewer.get("/slos/").content.decode()

    support = _row(page, "support", "availability")
    assert '<td class="objective" title="99% available">99%</td>' in support  # short; 1280 px
    assert '<td class="num" data-window="1h" title="100 valid requests">80%</td>' in support
    assert 'data-field="budget">-1900%</td>' in support  # 20 bad of a budget of 1
    assert '<td class="num burn fast" data-burn="1h">20.0\u00d7</td>' in support
    assert '<td class="num burn fast" data-burn="5m">20.0\u00d7</td>' in support
    assert '<td class="num burn slow" data-burn="6h">20.0\u00d7</td>' in support
    assert '<td class="num burn over" data-burn="24h">20.0\u00d7</td>' in support
    assert '<span class="pill fast-burn" data-field="state">fast burn</span>' in support

    latency = _row(page, "billing", "latency")
    assert 'title="95% within 500 ms">95% \u2264\u00a0500\u00a0ms</td>' in latency
    assert '<td class="num" data-window="24h" title="100 valid requests">90%</td>' in latency
    assert '<td class="num burn over" data-burn="1h">2.0\u00d7</td>' in latency
    assert '<span class="pill exhausted" data-field="state">budget spent</span>' in latency
    fine = _row(page, "billing", "availability")
    assert '<span class="pill ok" data-field="state">ok</span>' in fine
    assert '<td class="num burn " data-burn="1h">0.0\u00d7</td>' in fine
    assert "<span data-burning>1</span> SLI burning" in page
    assert "style=" not in page  # the CSP: colours come from classes


def test_the_chart_data_has_each_agents_budget_per_day_in_a_data_attribute(
    viewer: Client,
) -> None:
    burning()
    page = viewer.get("/slos/").content.decode()
    marker = 'id="slo-data" hidden data-json="'
    start = page.index(marker) + len(marker)
    data = json.loads(html.unescape(page[start : page.index('"', start)]))
    assert data["agents"] == ["billing", "support"]
    assert len(data["at"]) == 31
    assert data["at"][-1] == MINUTE.replace(hour=0, minute=0, second=0).timestamp()
    assert data["availability"][1][-1] == pytest.approx(-19.0)
    assert data["latency"][0][-1] == pytest.approx(1 - 10 / (0.05 * 100))
    assert data["availability"][1][0] == pytest.approx(1.0)
    assert "<script>" not in page.split("</main>")[0]  # no inline script
    assert 'data-slo-chart="availability"' in page
    assert 'data-slo-chart="latency"' in page


def test_without_agents_the_page_says_how_to_add_one(viewer: Client) -> None:
    page = viewer.get("/slos/").content.decode()
    assert "No agents yet" in page
    assert "slo-data" not in page


def test_the_page_needs_a_console_role_and_is_in_the_nav(viewer: Client) -> None:
    assert Client().get("/slos/").status_code == 302
    page = viewer.get("/slos/").content.decode()
    assert '<a href="/slos/" aria-current="page">SLOs</a>' in page


@pytest.mark.parametrize("with_data", [False, True], ids=["empty", "data"])
def test_the_page_costs_a_fixed_number_of_queries(
    viewer: Client, django_assert_max_num_queries: Any, with_data: bool
) -> None:
    if with_data:
        burning()
        for n in range(30):
            Agent.objects.create(name=f"more-{n}", model="m")
            many(2, minutes_ago=n, agent=f"more-{n}")
        traffic_rollups_refresh(now=MINUTE, minutes=60)
    with django_assert_max_num_queries(6):  # session, user, groups + the three of slo_list
        response = viewer.get("/slos/")
    assert response.status_code == 200
