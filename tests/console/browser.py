"""Real-Chromium console tests (Selenium with Debian's ``chromium`` and ``chromium-driver``).

:class:`ConsoleServer` is a live ``manage.py serve`` in embedded mode (its own SQLite and var
directory, the in-process worker and scheduler, like ``make run``) with a small deployment on
simulated providers, one user per console role and an API key with every scope.
:func:`new_driver` starts headless Chromium through chromedriver with the browser log on, and
:func:`browser_errors` reads what the page logged at error level: uncaught script errors,
Content-Security-Policy violations and failed loads. Nothing is downloaded: Selenium is told
where chromedriver is, so Selenium Manager never runs.

The fixtures in ``tests/console/conftest.py`` share one server per test process (xdist worker)
and one signed-in browser per role.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.live import ROOT, embedded_env, free_port, manage, wait_http

ROLES = ("viewer", "operator", "admin")

# Two agents: "support" (primary m-main, fallback m-back, an agent budget) and "writer" (m-back
# only). Simulated providers answer in a few milliseconds; prices make every call cost money.
CONFIG = """
providers:
  - {name: sim-main, kind: simulated, simulation: {latency_ms: 5, seed: 1}}
  - {name: sim-back, kind: simulated, simulation: {latency_ms: 5, seed: 2}}
models:
  - {name: m-main, provider: sim-main, upstream_model: main-1,
     input_usd_per_mtok: 2.0, output_usd_per_mtok: 8.0}
  - {name: m-back, provider: sim-back, upstream_model: back-1,
     input_usd_per_mtok: 0.5, output_usd_per_mtok: 1.5}
agents:
  - name: support
    description: Answers customer questions.
    model: m-main
    fallback_models: [m-back]
    cache_ttl_s: 0
    daily_budget_usd: 50
  - name: writer
    description: Drafts copy.
    model: m-back
    cache_ttl_s: 0
"""


@dataclass
class ConsoleServer:
    url: str
    var_dir: Path
    process: subprocess.Popen[bytes]
    passwords: dict[str, str] = field(default_factory=dict)  # role -> password (user = role)
    api_key: str = ""  # every scope

    def manage(self, *args: str, stdin: str | None = None) -> str:
        return manage(self.var_dir, *args, stdin=stdin)

    def api(
        self, method: str, path: str, body: Any = None, *, key: str | None = None
    ) -> tuple[int, Any]:
        """Call the REST API with the server's key (or ``key``); (status, parsed JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {key or self.api_key}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            raw, status = error.read(), error.code
        return status, (json.loads(raw) if raw else None)

    def execute(
        self, agent: str, text: str = "hello", *, key: str | None = None
    ) -> tuple[int, Any]:
        return self.api("POST", f"/api/v1/agents/{agent}/execute", {"input": text}, key=key)


@contextlib.contextmanager
def console_server(var_dir: Path, config: str = CONFIG, **env: str) -> Iterator[ConsoleServer]:
    manage(var_dir, "migrate", "--noinput")
    manage(var_dir, "apply", "-f", "-", stdin=config)
    passwords = {
        role: manage(var_dir, "create_user", "--username", role, "--role", role).strip()
        for role in ROLES
    }
    api_key = manage(
        var_dir,
        "create_api_key",
        "--name",
        "browser-tests",
        "--scopes",
        "read,execute,operate,admin",
    ).strip()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "serve", "--port", str(port)],
        cwd=ROOT,
        env=embedded_env(var_dir, **env),
        stdout=subprocess.DEVNULL,
        stderr=open(var_dir / "serve.log", "wb"),  # noqa: SIM115 - kept for a failing test's eyes
        start_new_session=True,
    )
    server = ConsoleServer(f"http://127.0.0.1:{port}", var_dir, process, passwords, api_key)
    try:
        wait_http(f"{server.url}/healthz")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def chromedriver() -> str | None:
    return shutil.which("chromedriver")


def new_driver(chromium: str) -> Any:
    """Headless Chromium at 1280x900 with its console log readable by :func:`browser_errors`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver()))
    driver.set_page_load_timeout(30)
    return driver


def browser_errors(driver: Any) -> list[str]:
    """Error-level entries the browser logged since the last call (read clears them)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def login(driver: Any, server: ConsoleServer, role: str, next_path: str = "/") -> None:
    """Sign in through /login/ as the user named ``role``; waits for the redirect."""
    from selenium.webdriver.common.by import By

    driver.get(f"{server.url}/login/?next={next_path}")
    driver.find_element(By.NAME, "username").send_keys(role)
    driver.find_element(By.NAME, "password").send_keys(server.passwords[role])
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(driver, lambda d: "/login/" not in d.current_url)


def wait_until(driver: Any, condition: Any, seconds: float = 10.0) -> Any:
    """``condition(driver)`` once truthy (polls every 0.1 s); AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            last = condition(driver)
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {seconds}s (last value {last!r})")
