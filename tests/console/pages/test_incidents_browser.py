"""An incident in real Chromium: acknowledged, resolved (after a confirmation) and its postmortem
saved by an operator, with no browser console error."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser


def _status(driver: Any) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, "[data-incident-status]").text)


def test_an_incident_is_acknowledged_resolved_and_its_postmortem_saved(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    title = f"Browser drill {uuid.uuid4().hex[:8]}"
    status, body = live_console.api(
        "POST",
        "/api/v1/incidents",
        {"title": title, "severity": "major", "agent": "support", "message": "declared by a test"},
    )
    assert status == 201, body
    incident = body["id"]
    driver = browser_as("operator")

    driver.get(f"{live_console.url}/incidents/?state=open&agent=support")
    driver.find_element(By.LINK_TEXT, title).click()
    wait_until(driver, lambda d: d.current_url.endswith(f"/incidents/{incident}/"))
    assert _status(driver) == "open"

    driver.find_element(By.CSS_SELECTOR, "button[name=acknowledge]").click()
    wait_until(driver, lambda d: _status(d) == "acknowledged")

    driver.find_element(By.ID, "resolve-note").send_keys("failed over to the backup model")
    driver.find_element(By.CSS_SELECTOR, "button[name=resolve]").click()
    alert = wait_until(driver, lambda d: d.switch_to.alert)
    assert f"Resolve incident #{incident}?" in alert.text
    alert.accept()
    wait_until(driver, lambda d: _status(d) == "resolved")
    kinds = [
        li.get_attribute("data-kind")
        for li in driver.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    ]
    assert kinds == ["opened", "acknowledged", "resolved", "comment"]

    fields = {
        "impact": "Support answered from the fallback model for a while.",
        "root_cause": "The main model's provider throttled us.",
        "resolution": "Failed over to the backup model.",
        "lessons": "Alert on provider 429s sooner.",
    }
    for name, text in fields.items():
        driver.find_element(By.ID, f"pm-{name}").send_keys(text)
    driver.find_element(By.CSS_SELECTOR, "button[name=save_postmortem]").click()
    wait_until(
        driver,
        lambda d: "postmortem saved" in d.find_element(By.CSS_SELECTOR, ".messages").text,
    )
    status, saved = live_console.api("GET", f"/api/v1/incidents/{incident}")
    assert status == 200
    assert {name: saved[name] for name in fields} == fields
    assert saved["status"] == "resolved"
    assert saved["acknowledged_by"] == "user:operator"
    assert browser_errors(driver) == []


def test_a_viewer_reads_the_postmortem_without_a_form(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    status, body = live_console.api(
        "POST", "/api/v1/incidents", {"title": f"Read-only {uuid.uuid4().hex[:8]}"}
    )
    assert status == 201
    live_console.api("PATCH", f"/api/v1/incidents/{body['id']}", {"impact": "Nobody noticed."})
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/incidents/{body['id']}/")
    assert driver.find_element(By.CSS_SELECTOR, "dd[data-field=impact]").text == "Nobody noticed."
    assert driver.find_elements(By.CSS_SELECTOR, "textarea") == []
    assert driver.find_elements(By.CSS_SELECTOR, "button[name=acknowledge]") == []
    assert browser_errors(driver) == []
