"""``/budgets/`` in real Chromium: an operator's Pause degrades the agent's next execution with
``budget_exceeded``, and Resume restores normal answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser


def _support_budget(server: ConsoleServer) -> dict[str, Any]:
    status, body = server.api("GET", "/api/v1/budgets")
    assert status == 200, body
    (budget,) = [b for b in body["items"] if b["scope"] == "agent" and b["target"] == "support"]
    return dict(budget)


def _press(driver: Any, budget_id: int, action: str, reason: str) -> None:
    form = driver.find_element(By.CSS_SELECTOR, f'form[action="/budgets/{budget_id}/{action}/"]')
    form.find_element(By.NAME, "reason").send_keys(reason)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    alert = wait_until(driver, lambda d: d.switch_to.alert)
    assert "budget agent:support" in alert.text
    alert.accept()


def _fallback_reason(server: ConsoleServer) -> Any:
    status, body = server.execute("support", "is my order late?")
    assert status == 200, body
    return body["fallback_reason"] or "none"


def test_pause_degrades_the_next_execution_and_resume_restores_it(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    budget = _support_budget(live_console)
    driver = browser_as("operator")
    try:
        driver.get(f"{live_console.url}/budgets/")
        row = f'tr[data-budget-id="{budget["id"]}"]'
        bar = driver.find_element(By.CSS_SELECTOR, f'{row} [data-bar="use"] .spent')
        assert bar.get_attribute("style").startswith("width:")  # sized by budgets.js
        _press(driver, budget["id"], "pause", "browser test: stop spend")
        pill = f'{row} [data-field="state"]'
        wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, pill).text == "paused")
        assert "paused" in driver.find_element(By.CSS_SELECTOR, ".messages").text
        reason = wait_until(
            driver,
            lambda d: (r := _fallback_reason(live_console)) == "budget_exceeded" and r,
            seconds=10,
        )
        assert reason == "budget_exceeded"
        _press(driver, budget["id"], "resume", "browser test: done")
        wait_until(driver, lambda d: d.find_element(By.CSS_SELECTOR, pill).text != "paused")
        wait_until(driver, lambda d: _fallback_reason(live_console) == "none", seconds=10)
        assert browser_errors(driver) == []
        audited = live_console.manage(
            "shell",
            "-c",
            "from core.models import AuditEvent; print(sorted(set(AuditEvent.objects.filter("
            f"target_type='budget', target_id='{budget['id']}', actor='user:operator')"
            ".values_list('action', flat=True))))",
        )
        assert "'budget_pause'" in audited
        assert "'budget_resume'" in audited
    finally:
        live_console.api("PATCH", f"/api/v1/budgets/{budget['id']}", {"paused": False})


def test_a_viewer_sees_the_budgets_but_no_actions(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/budgets/")
    assert driver.find_elements(By.CSS_SELECTOR, "tr[data-budget-id]")
    assert driver.find_elements(By.CSS_SELECTOR, "td.actions form") == []
    assert browser_errors(driver) == []
