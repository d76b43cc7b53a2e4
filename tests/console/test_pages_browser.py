"""Every console page in real Chromium: it renders with no browser console error (script
errors, CSP violations, failed loads: issue 12's acceptance), every form control has a label,
and the overview fits a 390 px wide screen (the fixtures: tests/console/conftest.py).

A page whose view is still the foundation's placeholder on this branch (console/pages/<page>.py
``placeholder``: a 404) is skipped, naming it; once its real view lands the page is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.urls import Resolver404, resolve

from tests.console.browser import ConsoleServer, browser_errors, login, wait_until

pytestmark = pytest.mark.browser

# Console pages (templates/base.html) and the two others a console user reaches from its nav.
CONSOLE = [
    "/",
    "/agents/",
    "/agents/support/",
    "/executions/",
    "/budgets/",
    "/incidents/",
    "/slos/",
    "/keys/",
    "/audit/",
    "/drills/",
]
OTHERS = ["/api/v1/docs", "/admin/"]

UNLABELLED = """
return Array.from(document.querySelectorAll("input, select, textarea"))
  .filter((el) => !["hidden", "submit", "button", "reset", "image"].includes(el.type))
  .filter((el) => {
    if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) return false;
    if (el.closest("label")) return false;
    return !(el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`));
  })
  .map((el) => el.outerHTML.slice(0, 120));
"""


def _placeholder(path: str) -> bool:
    try:
        match = resolve(path.split("?")[0])
    except Resolver404:
        return False
    return getattr(match.func, "__name__", "") == "placeholder"


def _rendered(driver: Any, server: ConsoleServer, path: str) -> None:
    driver.get(f"{server.url}{path}")
    wait_until(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    assert "/login/" not in driver.current_url, f"{path} sent the admin to sign in"
    title = driver.title
    assert not title.startswith(("Not found", "Forbidden", "Server error")), (path, title)


@pytest.mark.parametrize("path", [*CONSOLE, *OTHERS])
def test_every_page_renders_for_an_admin_with_no_browser_console_error(
    browser_as: Callable[[str], Any], live_console: ConsoleServer, path: str
) -> None:
    if _placeholder(path):
        pytest.skip(f"{path} is still a placeholder on this branch")
    driver = browser_as("admin")
    _rendered(driver, live_console, path)
    if path in CONSOLE:
        assert driver.execute_script(UNLABELLED) == [], f"unlabelled form controls on {path}"
    assert browser_errors(driver) == []


def test_the_login_page_renders_with_no_browser_console_error_and_labelled_fields(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> None:
    driver = driver_factory()
    driver.get(f"{live_console.url}/login/")
    wait_until(driver, lambda d: d.execute_script("return document.readyState") == "complete")
    assert driver.execute_script(UNLABELLED) == []
    assert browser_errors(driver) == []


def test_the_overview_fits_a_390_px_wide_screen(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> None:
    driver = driver_factory()
    driver.set_window_size(390, 844)
    login(driver, live_console, "viewer")
    driver.get(f"{live_console.url}/")
    wait_until(driver, lambda d: d.find_elements("css selector", "[data-chart] canvas"))
    width = driver.execute_script("return window.innerWidth")
    assert width <= 400
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= width, f"the page is {scroll} px wide on a {width} px screen"
    assert driver.execute_script(UNLABELLED) == []
    assert browser_errors(driver) == []
