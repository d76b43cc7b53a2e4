"""Signing in to the console in real Chromium (the fixtures: tests/console/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, login, wait_until

pytestmark = pytest.mark.browser


def test_signing_in_returns_to_the_page_asked_for(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> None:
    driver = driver_factory()
    driver.get(f"{live_console.url}/budgets/")
    wait_until(driver, lambda d: "/login/?next=/budgets/" in d.current_url)
    login(driver, live_console, "viewer", next_path="/budgets/")
    assert driver.current_url == f"{live_console.url}/budgets/"
    assert browser_errors(driver) == []


def test_a_wrong_password_is_refused_with_a_message(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> None:
    driver = driver_factory()
    driver.get(f"{live_console.url}/login/")
    driver.find_element(By.NAME, "username").send_keys("viewer")
    driver.find_element(By.NAME, "password").send_keys("not-the-password")
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    error = wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, ".login .error").text)
    assert "did not match" in error
    assert "/login/" in driver.current_url


def test_a_viewer_sees_no_admin_pages_in_the_navigation(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    links = {}
    for role in ("viewer", "admin"):
        driver = browser_as(role)
        driver.get(f"{live_console.url}/")
        links[role] = {a.text for a in driver.find_elements(By.CSS_SELECTOR, "header nav a")}
    assert {"Overview", "Agents", "Budgets"} <= links["viewer"]
    assert not {"API keys", "Audit", "Admin"} & links["viewer"]
    assert {"API keys", "Audit", "Admin"} <= links["admin"]


def test_signing_out_ends_the_session(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> None:
    driver = driver_factory()
    login(driver, live_console, "operator")
    driver.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "form.logout") == [])
    driver.get(f"{live_console.url}/agents/")
    assert "/login/?next=/agents/" in driver.current_url
