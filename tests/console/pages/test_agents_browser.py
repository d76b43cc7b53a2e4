"""/agents/ and /agents/{name}/ in real Chromium (the fixtures: tests/console/conftest.py).

The server is shared with other browser tests: every breaker changed here is reset at the end.
The audit row is checked in the server's database with ``manage.py shell -c`` (no audit API on
this branch).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.console.browser import ConsoleServer, browser_errors, wait_until

pytestmark = pytest.mark.browser


def _breaker(server: ConsoleServer, agent: str = "support") -> str:
    status, body = server.api("GET", f"/api/v1/agents/{agent}/breaker")
    assert status == 200, body
    return str(body["state"])


def _audited(server: ConsoleServer, action: str, reason: str) -> int:
    code = (
        "from core.models import AuditEvent; "
        f"print(AuditEvent.objects.filter(action={action!r}, actor='user:operator', "
        f"target_id='agent:support', reason={reason!r}).count())"
    )
    return int(server.manage("shell", "-c", code).strip().splitlines()[-1])


def _act(driver: Any, action: str, reason: str) -> None:
    form = driver.find_element(By.CSS_SELECTOR, "#breakers form")
    field = form.find_element(By.NAME, "reason")
    field.clear()
    field.send_keys(reason)
    form.find_element(By.CSS_SELECTOR, f'button[value="{action}"]').click()
    alert = wait_until(driver, lambda d: d.switch_to.alert)
    assert "Change the breaker of agent support?" in alert.text
    alert.accept()
    wait_until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".messages .success"))


def test_force_open_on_the_agent_page_opens_the_breaker_for_the_api_and_reset_restores_it(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("operator")
    assert _breaker(live_console) == "closed"
    try:
        driver.get(f"{live_console.url}/agents/support/")
        _act(driver, "force_open", "browser test: provider drill")
        assert _breaker(live_console) == "forced_open"
        assert _audited(live_console, "breaker_force_open", "browser test: provider drill") == 1
        state = driver.find_element(By.CSS_SELECTOR, '#breakers [data-breaker="support"]')
        assert state.text == "forced_open"
        _act(driver, "reset", "browser test: drill over")
        assert _breaker(live_console) == "closed"
        assert _audited(live_console, "breaker_reset", "browser test: drill over") == 1
        assert browser_errors(driver) == []
    finally:
        live_console.api("POST", "/api/v1/agents/support/breaker", {"action": "reset"})


def test_a_viewer_sees_no_toggles_and_a_forged_post_is_refused(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    driver = browser_as("viewer")
    driver.get(f"{live_console.url}/agents/support/")
    assert driver.find_elements(By.CSS_SELECTOR, "#breakers form") == []
    assert driver.find_elements(By.CSS_SELECTOR, "button[name=action]") == []
    assert driver.find_elements(By.CSS_SELECTOR, "textarea") == []
    assert "name: support" in driver.find_element(By.CSS_SELECTOR, "pre[data-config]").text
    # The viewer's own session cookie and CSRF token, on a hand-made POST.
    status = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
        const body = new URLSearchParams({action: "force_open", reason: "forged",
                                          csrfmiddlewaretoken: token});
        fetch("/agents/support/breaker/", {method: "POST", body: body, credentials: "same-origin"})
          .then((r) => done(r.status), (e) => done(String(e)));
        """
    )
    assert status == 403
    assert _breaker(live_console) == "closed"
    config = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const token = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRFToken"];
        const body = new URLSearchParams({step: "save", config: "name: support\\nmodel: m-back\\n",
                                          csrfmiddlewaretoken: token});
        fetch("/agents/support/config/", {method: "POST", body: body})
          .then((r) => done(r.status), (e) => done(String(e)));
        """
    )
    assert config == 403
    _, agent = live_console.api("GET", "/api/v1/agents/support")
    assert agent["model"] == "m-main"
    browser_errors(driver)  # the two refused fetches log their 403s; nothing else may


def test_the_table_draws_sparklines_and_the_csv_link_downloads_the_apis_csv(
    browser_as: Callable[[str], Any], live_console: ConsoleServer
) -> None:
    live_console.execute("support", "sparkline traffic")
    driver = browser_as("viewer")

    def with_totals(d: Any) -> bool:  # the traffic rollups are refreshed every 15 s
        d.get(f"{live_console.url}/agents/?window=1h")
        return bool(d.find_elements(By.CSS_SELECTOR, "#agents-table tfoot tr[data-total]"))

    wait_until(driver, with_totals, seconds=45)
    rows = driver.find_elements(By.CSS_SELECTOR, "#agents-table tbody tr")
    assert {row.get_attribute("data-agent") for row in rows} >= {"support", "writer"}
    wait_until(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "[data-sparkline][data-drawn] canvas")) >= 2,
    )
    link = driver.find_element(By.CSS_SELECTOR, "a[data-csv]")
    assert link.get_attribute("href").endswith("/agents/stats.csv?window=1h")
    got = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch(arguments[0]).then(async (r) => done({status: r.status,
          type: r.headers.get("content-type"), disposition: r.headers.get("content-disposition"),
          text: await r.text()}), (e) => done({error: String(e)}));
        """,
        link.get_attribute("href"),
    )
    request = urllib.request.Request(
        f"{live_console.url}/api/v1/stats/agents?window=1h&format=csv",
        headers={"Authorization": f"Bearer {live_console.api_key}"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        api_text = response.read().decode()
        api_disposition = response.headers["Content-Disposition"]
    assert got["status"] == 200, json.dumps(got)
    assert got["type"] == "text/csv; charset=utf-8"
    assert got["disposition"] == api_disposition
    assert got["text"].splitlines()[0] == api_text.splitlines()[0]
    assert {line.split(",")[0] for line in got["text"].splitlines()[1:]} == {
        line.split(",")[0] for line in api_text.splitlines()[1:]
    }
    # Sorting by a column reorders the body and keeps the totals row in the footer.
    driver.find_element(By.CSS_SELECTOR, "#agents-table thead th:nth-child(1) button").click()
    assert driver.find_elements(By.CSS_SELECTOR, "#agents-table tfoot tr[data-total]")
    assert browser_errors(driver) == []
