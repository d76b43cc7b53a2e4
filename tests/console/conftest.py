"""Fixtures for the console's real-browser tests (tests/console/browser.py says how they work)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_service
from tests.console.browser import ConsoleServer, chromedriver, console_server, login, new_driver


@pytest.fixture(scope="session")
def live_console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    """One live console per test process, shared by the browser tests: they must not assume
    an empty database (use fresh names, or read a figure before changing it)."""
    with console_server(tmp_path_factory.mktemp("live-console")) as server:
        yield server


@pytest.fixture(scope="session")
def driver_factory(chromium: str) -> Iterator[Callable[[], Any]]:
    """Starts signed-out Chromium drivers; quits them all at the end."""
    require_service("chromedriver", chromedriver() is not None, "apt-get install chromium-driver")
    drivers: list[Any] = []

    def start() -> Any:
        driver = new_driver(chromium)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


@pytest.fixture(scope="session")
def browser_as(
    driver_factory: Callable[[], Any], live_console: ConsoleServer
) -> Callable[[str], Any]:
    """``browser_as("operator")``: a Chromium signed in as that role, one per role."""
    signed_in: dict[str, Any] = {}

    def get(role: str) -> Any:
        if role not in signed_in:
            driver = driver_factory()
            login(driver, live_console, role)
            signed_in[role] = driver
        driver = signed_in[role]
        driver.get_log("browser")  # start each test with an empty log
        return driver

    return get
