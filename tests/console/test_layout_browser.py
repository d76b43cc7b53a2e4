"""Every console page fits a 1280x800 window in real Chromium: no table, and nothing else that
scrolls sideways, is wider than its container (a cut-off last column: the SLO table's State
column once was), and the page itself never scrolls sideways. The SLO table, the widest, also
fits a 1024 px window. Measured in the browser (``scrollWidth`` against ``clientWidth``), on data
of the demo's shape: ten-odd columns of figures, long incident titles, channels with long
addresses and deliveries with errors (the fixtures: tests/console/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.console.browser import ConsoleServer, wait_until

pytestmark = pytest.mark.browser

PAGES = [
    "/",
    "/agents/",
    "/agents/support/",
    "/executions/",
    "/executions/{execution}/",
    "/budgets/",
    "/incidents/",
    "/incidents/{incident}/",
    "/slos/",
    "/notifications/",
    "/drills/",
    "/keys/",
    "/audit/",
]

# What scrolls sideways inside <main> though it should not, and the page's own overflow.
# <pre> and <textarea> (logs, outputs, the config editor) scroll on purpose.
OVERFLOWS = """
const found = [];
const root = document.documentElement;
if (root.scrollWidth > root.clientWidth) {
  found.push(`the page: ${root.scrollWidth} px wide in a ${root.clientWidth} px window`);
}
for (const el of document.querySelectorAll("main *")) {
  if (["PRE", "TEXTAREA"].includes(el.tagName)) continue;
  const overflow = getComputedStyle(el).overflowX;
  if (!["auto", "scroll", "hidden"].includes(overflow)) continue;
  if (el.scrollWidth > el.clientWidth + 1) {
    const what = el.tagName.toLowerCase() + (el.className ? "." + el.className : "");
    const inner = el.querySelector("table");
    const label = inner ? ` (table ${inner.className || inner.id || ""})` : "";
    found.push(`${what}${label}: ${el.scrollWidth} px of content in ${el.clientWidth} px`);
  }
}
return found;
"""

# Demo-shaped data: an agent named like the demo's on a flaky upstream (its SLO table row then
# carries figures as wide as the demo's, such as "71.429%" and "-28471.4%"), channels with long
# addresses, a long incident title.
FLAKY = """
providers:
  - {name: sim-flaky, kind: simulated,
     simulation: {latency_ms: 40, jitter_ms: 40, error_rate: 0.3, seed: 7}}
models:
  - {name: m-flaky, provider: sim-flaky, upstream_model: flaky-1,
     input_usd_per_mtok: 1.0, output_usd_per_mtok: 4.0}
agents:
  - {name: meeting-summarizer, model: m-flaky, max_retries: 0, cache_ttl_s: 0,
     daily_budget_usd: 25, slo: {availability: 0.999, latency_ms: 50, latency_quantile: 0.95}}
notifications:
  - {name: ops-hook-platform, kind: webhook, min_severity: minor,
     url: "http://127.0.0.1:9/hooks/breakwater/incidents?team=platform-oncall&region=eu-west-1"}
  - {name: ops-mail, kind: email, min_severity: critical,
     to: [ops@example.com, platform-oncall@example.com, sre-leads@example.com]}
"""
TITLE = (
    "SLO fast burn on meeting-summarizer: availability error budget burning at 105.3x over 1h "
    "and 250.0x over 5m"
)


def _counted(server: ConsoleServer) -> bool:
    """The flaky agent's traffic has reached the SLIs (the rollups refresh every 15 s)."""
    status, body = server.api("GET", "/api/v1/slos")
    rows = (
        [row for row in body["items"] if row["agent"] == "meeting-summarizer"]
        if status == 200
        else []
    )
    return bool(rows) and rows[0]["availability"]["windows"]["1h"]["valid"] >= 21


@pytest.fixture(scope="module")
def ids(live_console: ConsoleServer) -> dict[str, str]:
    """Demo-shaped data on the shared server; the ids the detail pages need."""
    live_console.manage("apply", "-f", "-", stdin=FLAKY)
    # Serving processes pick the new agent up at their next config poll (about a second); a
    # 404 is not recorded, so the agent gets 21 calls: a share of 21 prints as "71.429%".
    wait_until(None, lambda _: live_console.execute("meeting-summarizer")[0] != 404)
    for n in range(20):
        live_console.execute("meeting-summarizer", f"summarise meeting {n}")
    status, body = live_console.execute("support", "a question about a late order")
    assert status == 200, body
    status, incident = live_console.api(
        "POST",
        "/api/v1/incidents",
        {"title": TITLE, "severity": "critical", "agent": "support", "message": "declared"},
    )
    assert status == 201, incident
    # Port 9 refuses: the delivery log gets an attempt with an error.
    status, sent = live_console.api("POST", "/api/v1/notifications/ops-hook-platform/test")
    assert status in (200, 202), sent
    wait_until(None, lambda _: _counted(live_console), seconds=45)
    return {"execution": body["execution_id"], "incident": str(incident["id"])}


@pytest.fixture
def admin_window(browser_as: Callable[[str], Any]) -> Iterator[Any]:
    """The shared admin browser, given back at the size the other tests expect."""
    driver = browser_as("admin")
    size = driver.get_window_size()
    yield driver
    driver.set_window_size(size["width"], size["height"])


def _overflows(driver: Any, url: str, width: int) -> list[str]:
    driver.set_window_size(width, 800)
    driver.get(url)
    wait_until(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    assert "/login/" not in driver.current_url
    # Tables are complete server-side; wait only for the browser's own figures (charts, times).
    wait_until(
        driver,
        lambda d: d.execute_script(
            "return !document.querySelector('time[datetime]:not([data-local])')"
        ),
    )
    return list(driver.execute_script(OVERFLOWS))


@pytest.mark.parametrize("page", PAGES)
def test_nothing_on_the_page_is_wider_than_a_1280_px_window(
    admin_window: Any, live_console: ConsoleServer, ids: dict[str, str], page: str
) -> None:
    path = page.format(**ids)
    assert _overflows(admin_window, live_console.url + path, 1280) == [], path


def test_the_slo_table_fits_a_1024_px_window_too(
    admin_window: Any, live_console: ConsoleServer, ids: dict[str, str]
) -> None:
    assert _overflows(admin_window, f"{live_console.url}/slos/", 1024) == []
    # The two burn-rate columns that repeat the 24h and 30d SLIs give way, and say so.
    hidden = admin_window.execute_script(
        "return Array.from(document.querySelectorAll('[data-burn-window]'))"
        ".filter((th) => th.offsetWidth === 0).map((th) => th.dataset.burnWindow)"
    )
    assert hidden == ["24h", "30d"]
    assert admin_window.execute_script(
        "return document.querySelector('.narrow-note').offsetWidth > 0"
    )
