"""The overview page in real Chromium: live figures without a reload, the live badge, a
reconnect, the charts (the fixtures: tests/console/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser

LIVE_METRICS = (
    "requests_total",
    "success_rate",
    "p95_latency_ms",
    "spend_today_usd",
    "open_incidents",
    "breakers_open",
)


def _text(driver: Any, name: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f'[data-metric="{name}"]').text)


def _live_badge(driver: Any) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, "[data-live-status]").text)


def _open(driver: Any, server: ConsoleServer) -> None:
    driver.get(f"{server.url}/")
    wait_until(driver, lambda d: _live_badge(d) == "live")
    # Set on this page's window object: a reload or a navigation would lose it.
    driver.execute_script("window.__overviewMarker = 'still here';")


def test_the_page_shows_every_contract_figure_and_says_live(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    _open(driver, live_console)
    for name in LIVE_METRICS:
        assert _text(driver, name) != ""
    assert _live_badge(driver) == "live"
    charts = driver.find_elements(By.CSS_SELECTOR, "[data-chart] canvas")
    assert len(charts) == 3  # requests/errors/fallbacks, latency, spend (uPlot)
    assert browser_errors(driver) == []


def test_an_overview_figure_changes_within_5_s_of_traffic_without_a_reload(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    _open(driver, live_console)
    before = _text(driver, "requests_total")
    for n in range(3):
        status, _ = live_console.execute("support", f"overview live figure {n}")
        assert status == 200
    after = wait_until(
        driver, lambda d: (t := _text(d, "requests_total")) != before and t, seconds=5
    )
    assert int(after.replace(",", "")) >= int(before.replace(",", "").replace("\u2013", "0")) + 3
    assert driver.execute_script("return window.__overviewMarker") == "still here"
    assert browser_errors(driver) == []


def test_a_dropped_socket_shows_reconnecting_then_live_again(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    _open(driver, live_console)
    driver.execute_script(
        """
        const badge = document.querySelector("[data-live-status]");
        window.__liveStates = [];
        new MutationObserver(() => window.__liveStates.push(badge.textContent))
          .observe(badge, {childList: true, characterData: true, subtree: true});
        window.__resynced = 0;
        document.body.addEventListener("bw:resync", () => { window.__resynced += 1; });
        window.Breakwater.live._drop();
        """
    )
    wait_until(driver, lambda d: "reconnecting…" in d.execute_script("return window.__liveStates"))
    wait_until(driver, lambda d: _live_badge(d) == "live")
    assert driver.execute_script("return window.__resynced") == 1
    # The resync re-read the results part (htmx), and the charts were drawn again.
    wait_until(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-chart] canvas")) == 3)
    assert driver.execute_script("return window.__overviewMarker") == "still here"
    assert browser_errors(driver) == []


def test_choosing_a_window_shows_its_results(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    from selenium.webdriver.support.select import Select

    driver = browser_as("viewer")
    _open(driver, live_console)
    Select(driver.find_element(By.ID, "overview-window")).select_by_value("7d")
    wait_until(driver, lambda d: d.current_url.endswith("/?window=7d"))
    section = driver.find_element(By.ID, "overview-results")
    assert section.get_attribute("data-window") == "7d"
    assert "per hour" in section.text
    assert browser_errors(driver) == []
