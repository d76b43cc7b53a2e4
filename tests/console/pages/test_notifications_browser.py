"""Notifications in real Chromium: an admin's "Send test" reaches a real local webhook (failing
once, then accepting: the answer follows the delivery from retrying to sent), a viewer has no
button; no browser console error (strict CSP, htmx only)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until
from tests.incidents.receivers import http_receiver

pytestmark = pytest.mark.browser


def _channel(live_console: ConsoleServer, url: str) -> str:
    name = f"browser-{uuid.uuid4().hex[:8]}"
    status, body = live_console.api(
        "POST", "/api/v1/notifications", {"name": name, "kind": "webhook", "url": url}
    )
    assert status == 201, body
    return name


def test_send_test_delivers_to_a_real_webhook_and_the_answer_follows_it_to_sent(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    with http_receiver([500, 200]) as hook:
        name = _channel(live_console, hook.url)
        driver = browser_as("admin")
        driver.get(f"{live_console.url}/notifications/")
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-channel="{name}"]')
        row.find_element(By.CSS_SELECTOR, "form.send-test button").click()
        done = wait_until(
            driver,
            lambda d: d.find_element(
                By.CSS_SELECTOR, f'tr[data-channel="{name}"] .test-delivery[data-status="sent"]'
            ),
            seconds=30,
        )
        assert "after 2 attempts" in done.text
    assert [r.answered for r in hook.requests] == [500, 200]
    (accepted,) = hook.accepted
    body = json.loads(accepted.body)
    assert body["event"] == "test"
    assert body["delivery_id"] == done.get_attribute("data-delivery")
    assert "user:admin" in body["message"]
    # The log shows the delivery with both attempts.
    driver.get(f"{live_console.url}/notifications/?channel={name}")
    log_row = driver.find_element(By.CSS_SELECTOR, f'tr[data-delivery="{body["delivery_id"]}"]')
    assert "2 / 5" in log_row.text
    assert browser_errors(driver) == []


def test_a_viewer_sees_the_channels_but_no_send_test(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    name = _channel(live_console, "http://127.0.0.1:9/never-called")
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/notifications/")
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-channel="{name}"]')
    assert "minor and above" in row.text
    assert driver.find_elements(By.CSS_SELECTOR, "form.send-test") == []
    assert browser_errors(driver) == []
