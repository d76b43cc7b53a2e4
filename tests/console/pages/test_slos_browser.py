"""The SLOs page in real Chromium: the error-budget charts render (uPlot, data from the page's
data-json attribute under the strict CSP) with a line per agent, and traffic reaches the table
through the rollups (the fixtures: tests/console/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser

VALID_1H = '[data-agent="support"] [data-sli="availability"] [data-window="1h"]'


def _valid_after_reload(driver: Any, url: str) -> int:
    driver.get(url)
    title = driver.find_element(By.CSS_SELECTOR, VALID_1H).get_attribute("title")
    return int(title.split()[0].replace(",", ""))


def test_the_error_budget_charts_render_a_line_per_agent_with_no_console_error(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    for n in range(3):
        status, _ = live_console.execute("support", f"slo page {n}")
        assert status == 200
    driver = browser_as("viewer")
    url = f"{live_console.url}/slos/"
    # The traffic rollups refresh every 15 s (embedded scheduler): then the SLIs count it.
    wait_until(driver, lambda d: _valid_after_reload(d, url) >= 3, seconds=40)

    canvases = driver.find_elements(By.CSS_SELECTOR, "[data-slo-chart] canvas")
    assert len(canvases) == 2  # availability and latency error budgets
    for chart in ("availability", "latency"):
        box = driver.find_element(By.CSS_SELECTOR, f'[data-slo-chart="{chart}"]')
        labels = [el.text for el in box.find_elements(By.CSS_SELECTOR, ".u-legend .u-label")]
        assert {"support", "writer"} <= set(labels[1:])  # other tests may leave agents behind
        assert box.size["height"] >= 190
    cell = driver.find_element(By.CSS_SELECTOR, VALID_1H)
    assert cell.text.endswith("%")
    assert browser_errors(driver) == []
