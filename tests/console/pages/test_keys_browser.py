"""API keys in real Chromium: a key created in /keys/ works once copied, and revoking it there
refuses it within a second; no browser console error."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser


def test_a_key_created_here_works_once_copied_and_revoking_it_refuses_it_within_a_second(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    name = f"browser-{uuid.uuid4().hex[:8]}"
    driver = browser_as("admin")
    driver.get(f"{live_console.url}/keys/")
    driver.find_element(By.ID, "key-name").send_keys(name)
    driver.find_element(By.CSS_SELECTOR, "input[name=scopes][value=execute]").click()
    driver.find_element(By.CSS_SELECTOR, "button[name=create]").click()

    secret = wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#new-key.secret"))
    copy = driver.find_element(By.CSS_SELECTOR, 'button[data-copy="#new-key"]')
    # The copy button is reachable from the keyboard: Tab from the top of the page gets there.
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    for _ in range(40):
        if driver.switch_to.active_element == copy:
            break
        driver.switch_to.active_element.send_keys(Keys.TAB)
    assert driver.switch_to.active_element == copy
    copy.send_keys(Keys.ENTER)  # headless Chromium may refuse the clipboard: read what it copies
    key = secret.text.strip()
    assert key.startswith("bw_")

    status, body = live_console.execute("support", key=key)
    assert status == 200, body

    driver.get(f"{live_console.url}/keys/")
    assert key not in driver.page_source  # never shown again
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-key="{key[:11]}"]')
    row.find_element(By.CSS_SELECTOR, "input[name=reason]").send_keys("browser test done")
    row.find_element(By.CSS_SELECTOR, "form.revoke button").click()
    alert = wait_until(driver, lambda d: d.switch_to.alert)
    assert "Revoke" in alert.text
    alert.accept()
    wait_until(driver, lambda d: "revoked" in d.find_element(By.CSS_SELECTOR, ".messages").text)

    deadline = time.monotonic() + 1.0
    status = 0
    while time.monotonic() < deadline:
        status, _ = live_console.execute("support", key=key)
        if status == 401:
            break
        time.sleep(0.05)
    assert status == 401
    assert browser_errors(driver) == []


def test_the_keys_page_is_403_for_an_operator(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("operator")
    driver.get(f"{live_console.url}/keys/")
    assert "Not allowed" in driver.find_element(By.TAG_NAME, "h1").text
