"""``/executions/`` and ``/executions/{id}/`` in real Chromium: filtering, the timeline, and a
queued execution followed live to its end without a reload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser

# A slow agent (2.5 s per answer), added beside the shared server's agents (no --prune): its
# queued execution is still running when its page opens.
SLOW = """
providers:
  - {name: sim-slow, kind: simulated, simulation: {latency_ms: 2500, seed: 3}}
models:
  - {name: m-slow, provider: sim-slow, upstream_model: slow-1,
     input_usd_per_mtok: 1.0, output_usd_per_mtok: 2.0}
agents:
  - {name: slowpoke, description: Takes its time., model: m-slow, cache_ttl_s: 0, timeout_s: 20}
"""


def test_the_explorer_filters_and_opens_an_executions_timeline(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    status, body = live_console.execute("support", "where is my parcel?")
    assert status == 200, body
    execution_id = body["execution_id"]
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/executions/")
    Select(driver.find_element(By.ID, "f-agent")).select_by_value("support")
    Select(driver.find_element(By.ID, "f-status")).select_by_value(body["status"])
    Select(driver.find_element(By.ID, "f-range")).select_by_value("1h")
    driver.find_element(By.CSS_SELECTOR, "#execution-filters button[type=submit]").click()
    wait_until(driver, lambda d: "agent=support" in d.current_url)
    link = f'a[href="/executions/{execution_id}/"]'

    def listed(d: Any) -> Any:
        found = d.find_elements(By.CSS_SELECTOR, link)
        if not found:
            d.refresh()  # the journal may not have written it yet
        return found

    wait_until(driver, listed)
    agents = {
        td.text for td in driver.find_elements(By.CSS_SELECTOR, "table.executions td:nth-child(2)")
    }
    assert agents == {"support"}
    driver.find_element(By.CSS_SELECTOR, link).click()
    wait_until(driver, lambda d: f"/executions/{execution_id}/" in d.current_url)
    steps = driver.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert "Attempt 1 on m-main" in steps
    assert "Total" in steps
    assert browser_errors(driver) == []


def test_a_queued_execution_reaches_its_final_state_without_a_reload(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    live_console.manage("apply", "-f", "-", stdin=SLOW)
    driver = browser_as("viewer")

    def enqueue(_: Any) -> Any:
        status, body = live_console.api(
            "POST", "/api/v1/agents/slowpoke/executions", {"input": "take your time"}
        )
        return status == 202 and body["execution_id"]  # the new agent, once the config is live

    execution_id = wait_until(driver, enqueue)
    driver.get(f"{live_console.url}/executions/{execution_id}/")
    pill = "#execution-body [data-live-status-pill]"
    assert driver.find_element(By.CSS_SELECTOR, pill).text in {"queued", "running"}
    assert driver.find_element(By.ID, "execution-body").get_attribute("data-live") == "1"
    driver.execute_script("window.bwSamePage = true;")
    wait_until(
        driver, lambda d: d.find_element(By.CSS_SELECTOR, pill).text == "succeeded", seconds=20
    )
    wait_until(
        driver, lambda d: "Attempt 1 on m-slow" in d.find_element(By.ID, "execution-body").text
    )
    assert driver.execute_script("return window.bwSamePage === true;")  # no reload happened
    assert driver.find_element(By.ID, "execution-body").get_attribute("data-live") is None
    assert browser_errors(driver) == []


def test_an_unknown_execution_shows_the_404_page(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/executions/00000000-0000-0000-0000-000000000000/")
    assert "404" in driver.title or "not found" in driver.page_source.lower()
