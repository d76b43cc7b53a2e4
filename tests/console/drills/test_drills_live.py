"""The drills against a live ``serve`` (embedded mode, its own SQLite): ``manage.py drill``
as an operator would run it, with short durations, and the figures it prints checked against
what really happened; and a drill started from the ``/drills/`` page, run in the background by
the server's own worker against the server itself."""

from __future__ import annotations

import http.cookiejar
import json
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.console.browser import ConsoleServer, console_server
from tests.live import ROOT, embedded_env


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    # Deployment breakers probe again 5 s after opening (30 by default): the outage drill
    # waits for that after its outage.
    with console_server(
        tmp_path_factory.mktemp("drills"), BREAKWATER_DEPLOYMENT_BREAKER_RECOVERY_S="5"
    ) as live:
        yield live


def drill(server: ConsoleServer, *args: str, timeout: float = 240) -> tuple[int, dict[str, Any]]:
    """``manage.py drill ARGS --json`` against the server (its database, its URL)."""
    done = subprocess.run(
        [sys.executable, "manage.py", "drill", *args, "--url", server.url, "--json"],
        cwd=ROOT,
        env=embedded_env(server.var_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def values(result: dict[str, Any]) -> dict[str, Any]:
    return dict(result["figures"]["values"])


def checks(result: dict[str, Any]) -> dict[str, bool]:
    return {c["name"]: c["ok"] for c in result["figures"]["checks"]}


def leftovers(server: ConsoleServer) -> dict[str, list[str]]:
    """What of a drill would be left in the deployment: agents, providers and active keys."""
    _, agents = server.api("GET", "/api/v1/agents")
    _, keys = server.api("GET", "/api/v1/keys")
    exported = server.manage("export")
    return {
        "agents": [a["name"] for a in agents["items"] if a["name"].startswith("drill-")],
        "providers": re.findall(r"name: (drill-[\w-]+)", exported),
        "keys": [
            k["name"]
            for k in keys["items"]
            if k["name"].startswith("drill") and not k["revoked_at"]
        ],
    }


def test_the_outage_drill_opens_the_breaker_serves_the_fallback_and_resolves_the_incident(
    server: ConsoleServer,
) -> None:
    code, result = drill(
        server, "outage", "--agent", "support", "--seconds", "4", "--warmup-s", "2", "--rate", "4"
    )
    assert result["status"] == "passed", result
    assert code == 0
    got = values(result)
    assert all(checks(result).values())
    # The breaker opened within the outage, after the threshold's failures (5) reached it.
    assert 0 < got["time_to_open_s"] < 4
    assert 5 <= got["primary_calls_before_open"] <= 8
    # Once open, the primary saw no call for the rest of the outage.
    assert got["primary_calls_during_outage"] == got["primary_calls_before_open"]
    # Every request of the outage was answered, by the fallback model.
    assert got["outage_requests"] >= 10
    assert got["served_by_fallback"] == got["outage_requests"]
    assert got["failed"] == 0
    assert got["degraded"] == 0
    # The incident: opened with the breaker, resolved when the half-open probe closed it.
    _, incident = server.api("GET", f"/api/v1/incidents/{got['incident_id']}")
    assert incident["kind"] == "breaker_open"
    assert incident["status"] == "resolved"
    assert got["time_to_close_s"] > 0
    assert got["recovery_served_by_primary"] >= 1
    assert got["recorded"] == got["requests"]
    assert got["template"] == "support"
    assert leftovers(server) == {"agents": [], "providers": [], "keys": []}


def test_the_cost_spike_drill_stops_the_spend_at_the_budget(server: ConsoleServer) -> None:
    code, result = drill(
        server, "cost-spike", "--warmup-s", "2", "--budget-usd", "0.5", "--incident-wait-s", "2"
    )
    got = values(result)
    held = checks(result)
    assert held["budget refused the runaway loop"]
    assert held["spend stayed within the limit"]
    assert held["no upstream call once stopped (beyond those in flight)"]
    assert got["limit_usd"] == 0.5
    assert 0.3 < got["spent_usd"] <= 0.5
    assert got["state"] == "exceeded"
    assert got["refused"] > 0
    assert got["admitted"] >= 1
    assert got["failed"] == 0
    assert got["avoided_usd"] > got["spent_usd"]
    # The status follows the checks: passed only if every safeguard held (the incident too).
    assert result["status"] == ("passed" if all(held.values()) else "failed")
    assert code == (0 if all(held.values()) else 1)
    assert leftovers(server) == {"agents": [], "providers": [], "keys": []}


def test_the_memory_leak_drill_says_what_a_single_serve_lacks_and_leaks_nothing(
    server: ConsoleServer,
) -> None:
    # An embedded serve is one process with no supervisor: nothing would recycle a leak.
    code, result = drill(server, "memory-leak")
    assert code == 2
    assert result["status"] == "unsupported"
    assert "is not a supervised worker" in result["error"]
    assert "serve --workers 2 --max-rss-mb 400" in result["error"]
    _, memory = server.api("GET", "/api/v1/drills/memory")
    assert memory["leak"] == {"bytes_per_second": 0, "held_bytes": 0, "max_bytes": 0}
    assert leftovers(server) == {"agents": [], "providers": [], "keys": []}


def test_a_drill_against_no_server_is_an_error_and_leaves_no_key(
    server: ConsoleServer, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "drill", "outage", "--url", "http://127.0.0.1:9", "--json"],
        cwd=ROOT,
        env=embedded_env(server.var_dir),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    result = json.loads(done.stdout)
    assert done.returncode == 1
    assert result["status"] == "error"
    assert "127.0.0.1:9" in result["error"]
    assert leftovers(server)["keys"] == []


class Browserless:
    """A console session over plain HTTP (login form, CSRF cookie)."""

    def __init__(self, server: ConsoleServer, role: str) -> None:
        self.server = server
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))
        self.get("/login/")
        self.post("/login/", {"username": role, "password": server.passwords[role]})

    def csrf(self) -> str:
        return next(str(c.value) for c in self.jar if c.name == "csrftoken")

    def get(self, path: str) -> str:
        with self.opener.open(self.server.url + path, timeout=15) as response:
            return str(response.read().decode())

    def post(self, path: str, form: dict[str, str]) -> str:
        data = urllib.parse.urlencode(form | {"csrfmiddlewaretoken": self.csrf()}).encode()
        request = urllib.request.Request(
            self.server.url + path, data=data, headers={"Referer": self.server.url + path}
        )
        with self.opener.open(request, timeout=15) as response:
            return str(response.read().decode())


def test_an_operator_starts_a_drill_from_the_page_and_the_server_runs_it_on_itself(
    server: ConsoleServer,
) -> None:
    operator = Browserless(server, "operator")
    page = operator.post("/drills/start/", {"kind": "cost-spike", "agent": ""})
    started = re.search(r"Drill (\d+) \(cost-spike\) started", page)
    assert started, page
    drill_id = started.group(1)
    deadline = time.monotonic() + 120
    card = ""
    while time.monotonic() < deadline:
        card = operator.get(f"/drills/{drill_id}/")
        status = re.search(r'data-status="(\w+)"', card)
        if status and status.group(1) not in ("queued", "running"):
            break
        time.sleep(1)
    assert 'data-status="queued"' not in card, card
    assert 'data-status="running"' not in card, card
    assert "refused: budget_exceeded" in card
    assert "daily limit" in card
    assert "$0.5000" in card
    assert "by user:operator" in card
    # What the viewer sees: the same drill in the list.
    viewer = Browserless(server, "viewer")
    assert f'id="drill-{drill_id}"' in viewer.get("/drills/")
    assert leftovers(server) == {"agents": [], "providers": [], "keys": []}
