"""The console pages, the stock admin and the API docs work in a real browser under the
Content-Security-Policy (issue 10, point 15).

A live ``serve`` and headless Chromium driven over the DevTools protocol: each page is loaded
logged in, every ``securitypolicyviolation`` event and uncaught script error is collected, and
the API docs must render Swagger UI's operations (from our static files: nothing is fetched from
another origin).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.live import ROOT, embedded_env, free_port, manage, wait_http

pytestmark = pytest.mark.browser

PASSWORD = "a-long-passphrase-for-csp"  # a throwaway test user

# Runs before any page script, whatever the page's policy (DevTools injects it).
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


class DevTools:
    """The few DevTools-protocol calls these tests need, over one page's websocket."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self._socket = self._stack.enter_context(connect(url, max_size=None, open_timeout=10))
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        self._socket.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 20.0) -> Any:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        return self.evaluate(expression)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    var_dir = tmp_path_factory.mktemp("csp-browser")
    manage(var_dir, "migrate", "--noinput")
    manage(
        var_dir,
        "apply",
        "-f",
        "-",
        stdin=(
            "providers: [{name: sim, kind: simulated, simulation: {latency_ms: 0, seed: 1}}]\n"
            "models: [{name: m, provider: sim, upstream_model: m-1}]\n"
            "agents: [{name: helper, model: m, description: a helper}]\n"
        ),
    )
    subprocess.run(
        [sys.executable, "manage.py", "createsuperuser", "--noinput", "--username", "root"],
        cwd=ROOT,
        env=embedded_env(var_dir)
        | {"DJANGO_SUPERUSER_PASSWORD": PASSWORD, "DJANGO_SUPERUSER_EMAIL": "root@example.com"},
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port), "--no-embedded"],
        cwd=ROOT,
        env=embedded_env(var_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _session_cookie(url: str) -> str:
    """Log in through the admin's login form, as a browser would; the session id."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{url}/admin/login/", timeout=10) as response:
        response.read()
    csrf = next(str(cookie.value) for cookie in jar if cookie.name == "csrftoken")
    form = urllib.parse.urlencode(
        {"username": "root", "password": PASSWORD, "csrfmiddlewaretoken": csrf, "next": "/"}
    ).encode()
    request = urllib.request.Request(
        f"{url}/admin/login/", data=form, headers={"Referer": f"{url}/admin/login/"}
    )
    with opener.open(request, timeout=10) as response:
        response.read()
    return next(str(cookie.value) for cookie in jar if cookie.name == "sessionid")


@pytest.fixture(scope="module")
def browser(chromium: str, live: str) -> Iterator[DevTools]:
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        process = subprocess.Popen(
            [
                chromium,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            targets: list[dict[str, Any]] = []
            while time.monotonic() < deadline and not targets:
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r,
                ):
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                time.sleep(0.2)
            assert targets, "Chromium did not open its DevTools port"
            tools = DevTools(targets[0]["webSocketDebuggerUrl"])
            tools.call("Runtime.enable")
            tools.call("Page.enable")
            tools.call("Network.enable")
            tools.call("Page.addScriptToEvaluateOnNewDocument", source=RECORD_VIOLATIONS)
            host = urllib.parse.urlsplit(live).hostname
            tools.call(
                "Network.setCookie",
                name="sessionid",
                value=_session_cookie(live),
                domain=host,
                path="/",
            )
            yield tools
            tools.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _visit(tools: DevTools, url: str, ready: str) -> tuple[Any, list[str], list[str]]:
    """Load ``url``; (the value of ``ready`` once truthy, CSP violations, script errors)."""
    tools.events.clear()
    tools.call("Page.navigate", url=url)
    value = tools.wait_for(f"document.readyState === 'complete' && ({ready})")
    time.sleep(0.3)  # late violations (a script run on load)
    violations = tools.evaluate("window.__violations") or []
    errors = [
        event["params"]["exceptionDetails"].get("text", "")
        + str(event["params"]["exceptionDetails"].get("exception", {}).get("description", ""))
        for event in tools.events
        if event.get("method") == "Runtime.exceptionThrown"
    ]
    return value, violations, errors


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/", "document.querySelectorAll('[data-chart] canvas').length === 3"),  # the overview
        ("/login/", "document.querySelector('form') !== null"),  # logged in: redirected home
        ("/admin/", "document.querySelector('#content-main') !== null"),
        ("/admin/agents/agent/", "document.querySelector('#result_list') !== null"),
        # The change form's JavaScript: collapsible fieldsets, related-object widgets.
        ("/admin/agents/agent/1/change/", "document.querySelector('form') !== null"),
        ("/admin/agents/apikey/", "document.querySelector('#changelist') !== null"),
    ],
)
def test_console_and_admin_pages_load_without_a_policy_violation(
    browser: DevTools, live: str, path: str, ready: str
) -> None:
    value, violations, errors = _visit(browser, live + path, ready)
    assert value, f"{path} did not render"
    assert violations == []
    assert errors == []


def test_the_api_docs_render_swagger_ui_under_the_policy(browser: DevTools, live: str) -> None:
    operations, violations, errors = _visit(
        browser, f"{live}/api/v1/docs", "document.querySelectorAll('.opblock').length"
    )
    assert operations, "Swagger UI did not render the operations"
    assert operations > 10
    assert violations == []
    assert errors == []
