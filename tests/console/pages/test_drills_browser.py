"""``/drills/`` in real Chromium: an operator starts a drill, confirms, and its card follows the
drill in the background (htmx polling) to its outcome, with no browser console error."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser


def test_a_started_drill_is_followed_on_its_card_until_it_ends(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("operator")
    driver.get(f"{live_console.url}/drills/")
    # Each radio button sits beside its label, on the same line, not above it.
    for kind in ("outage", "cost-spike", "memory-leak"):
        radio = driver.find_element(By.ID, f"kind-{kind}").rect
        label = driver.find_element(By.CSS_SELECTOR, f'label[for="kind-{kind}"]').rect
        assert radio["x"] + radio["width"] <= label["x"], (kind, radio, label)
        assert radio["y"] < label["y"] + label["height"], (kind, radio, label)
        assert label["y"] < radio["y"] + radio["height"], (kind, radio, label)
    driver.find_element(By.ID, "kind-memory-leak").click()
    driver.find_element(By.CSS_SELECTOR, 'form[action="/drills/start/"] button').click()
    alert = wait_until(driver, lambda d: d.switch_to.alert)
    assert "Start this drill?" in alert.text
    alert.accept()
    message = wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".messages").text)
    found = re.search(r"Drill (\d+) \(memory-leak\) started", message)
    assert found, message
    card = f'section[data-drill="{found.group(1)}"]'
    status = wait_until(
        driver,
        lambda d: (
            (s := d.find_element(By.CSS_SELECTOR, card).get_attribute("data-status"))
            not in ("queued", "running")
            and s
        ),
        seconds=30,
    )
    # This deployment is one serve process, no supervisor: the drill says so, leaks nothing.
    assert status == "unsupported"
    assert "is not a supervised worker" in driver.find_element(By.CSS_SELECTOR, card).text
    assert browser_errors(driver) == []
