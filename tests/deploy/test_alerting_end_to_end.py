"""Alerting end to end with the real components (issue 13's acceptance): Debian's Prometheus
scrapes a live ``serve`` with the shipped rules (a copy with short ``for:``), Debian's
Alertmanager routes with the shipped routing tree to Breakwater's receiver and to a webhook
listener of the test's own. An outage of the agent's only upstream (fakellm answering 503) opens
its breaker: Breakwater opens its breaker incident, the breaker alert fires in Prometheus,
reaches the webhook and, through Breakwater's receiver, joins that incident's timeline (its
``breakwater_incident`` label names it: no second incident for one cause); the upstream comes
back, the breaker closes, and all three see it resolved.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.prometheus import ALERTMANAGER_CONFIG, PROMETHEUS_DIR, binary, short_for_copy
from tests.deploy.stack import Breakwater, breakwater, fakellm, set_faults
from tests.live import free_port, wait_http

CONFIG = """
providers:
  - {{name: upstream, kind: openai, base_url: "{upstream}/v1"}}
models:
  - {{name: primary, provider: upstream, upstream_model: gpt-4o-mini,
     input_usd_per_mtok: 0.15, output_usd_per_mtok: 0.60}}
agents:
  - name: outage
    model: primary
    max_retries: 0
    timeout_s: 5
    max_tokens: 32
    cache_ttl_s: 0
    breaker: {{failure_threshold: 2, recovery_timeout_s: 1, half_open_max_calls: 1}}
"""


@dataclass
class Webhook:
    """An HTTP listener that keeps every JSON body POSTed to it, by path."""

    url: str
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def notified(self, path: str) -> list[dict[str, Any]]:
        """Every alert of every notification received on ``path``, in order."""
        with self.lock:
            bodies = [body for at, body in self.received if at == path]
        return [alert for body in bodies for alert in body["alerts"]]

    def alerts(self, path: str) -> list[tuple[str, str]]:
        """(alertname, status) of every alert received on ``path``."""
        return [(a["labels"]["alertname"], a["status"]) for a in self.notified(path)]


@contextlib.contextmanager
def webhook_listener() -> Iterator[Webhook]:
    port = free_port()
    hook = Webhook(f"http://127.0.0.1:{port}")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with hook.lock:
                hook.received.append((self.path, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running(command: list[str], ready_url: str, log: Path) -> Iterator[None]:
    """A process of the test (its output in ``log``) until the block ends; ready once
    ``ready_url`` answers."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        try:
            wait_http(ready_url, deadline_s=20)
        except AssertionError:
            tail = log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"{command[0]} did not start:\n{tail}") from None
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def prometheus_config_for(rules: list[Path], target: str, alertmanager: str) -> dict[str, Any]:
    """The shipped example configuration, scraping and evaluating every second, with the
    test's rule copies, target and Alertmanager."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(path) for path in rules]
    (manager,) = config["alerting"]["alertmanagers"]
    manager["static_configs"] = [{"targets": [alertmanager]}]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "breakwater"
    job["static_configs"] = [{"targets": [target]}]
    return config


def alertmanager_config(live: Breakwater, hook: Webhook, key_file: Path) -> dict[str, Any]:
    """The shipped routing tree and receivers, pointed at this test's Breakwater and webhook
    listener, with waits of a second."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    config["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1m")
    for route in config["route"]["routes"]:
        route.pop("group_wait", None)
        route.pop("repeat_interval", None)
    for receiver in config["receivers"]:
        (webhook,) = receiver["webhook_configs"]
        if receiver["name"] == "breakwater":
            webhook["url"] = live.url + "/api/v1/alerts/alertmanager"
            webhook["http_config"]["authorization"]["credentials_file"] = str(key_file)
        else:
            webhook["url"] = f"{hook.url}/{receiver['name']}"
            webhook["send_resolved"] = True
    return config


def prometheus_alerts(url: str) -> dict[str, str]:
    """alertname -> state (pending, firing) of Prometheus' active alerts."""
    with urllib.request.urlopen(url + "/api/v1/alerts", timeout=5) as response:
        alerts = json.loads(response.read())["data"]["alerts"]
    return {alert["labels"]["alertname"]: alert["state"] for alert in alerts}


def query(url: str, promql: str) -> list[float]:
    """The values of an instant query's samples."""
    address = url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(address, timeout=5) as response:
        result = json.loads(response.read())["data"]["result"]
    return [float(sample["value"][1]) for sample in result]


def by_label(url: str, promql: str, label: str) -> dict[str, float]:
    """An instant query's values by one of their labels."""
    address = url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(address, timeout=5) as response:
        result = json.loads(response.read())["data"]["result"]
    return {sample["metric"][label]: float(sample["value"][1]) for sample in result}


def routed_to(url: str, alertname: str) -> set[str]:
    """The receivers Alertmanager routes its active alert ``alertname`` to."""
    with urllib.request.urlopen(url + "/api/v2/alerts", timeout=5) as response:
        alerts = json.loads(response.read())
    return {
        receiver["name"]
        for alert in alerts
        if alert["labels"]["alertname"] == alertname
        for receiver in alert["receivers"]
    }


def breaker_incident(live: Breakwater) -> dict[str, Any] | None:
    """Breakwater's own incident for the agent's breaker, if any; and no ``alert`` incident
    about the same breaker beside it."""
    status, body = live.call("GET", "/api/v1/incidents?kind=alert")
    assert status == 200, body
    about_the_breaker = [
        i["title"]
        for i in body["items"]
        if i["timeline"][0]["data"]["labels"].get("breakwater_incident") == "breaker:agent:outage"
    ]
    assert about_the_breaker == [], "an alert opened a second incident for the breaker"
    status, body = live.call("GET", "/api/v1/incidents?kind=breaker_open&agent=outage")
    assert status == 200, body
    assert len(body["items"]) <= 1, body["items"]
    return body["items"][0] if body["items"] else None


def alert_on_timeline(live: Breakwater) -> bool:
    incident = breaker_incident(live)
    return incident is not None and any(
        e["kind"] == "alert" and e["data"]["labels"]["alertname"] == "AgentCircuitBreakerOpen"
        for e in incident["timeline"]
    )


def eventually(check: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s}s: {what}")
        time.sleep(0.25)


Stack = tuple[Breakwater, str, str, str, Webhook]


@pytest.fixture
def outage_stack(tmp_path: Path) -> Iterator[Stack]:
    """fakellm, a live serve on it, a webhook listener, Alertmanager and Prometheus:
    ``(breakwater, fakellm URL, Prometheus URL, Alertmanager URL, webhook listener)``."""
    prometheus_bin = binary("prometheus")
    alertmanager_bin = binary("prometheus-alertmanager")
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(fakellm("--seed", "1"))
        live = stack.enter_context(breakwater(tmp_path / "var", CONFIG.format(upstream=upstream)))
        hook = stack.enter_context(webhook_listener())

        key_file = tmp_path / "breakwater-api-key"
        key_file.write_text(live.key)
        am_config = tmp_path / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(live, hook, key_file)))
        am_port = free_port()
        stack.enter_context(
            running(
                [
                    alertmanager_bin,
                    f"--config.file={am_config}",
                    f"--storage.path={tmp_path / 'alertmanager'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ],
                f"http://127.0.0.1:{am_port}/-/ready",
                tmp_path / "alertmanager.log",
            )
        )

        rules = short_for_copy(tmp_path / "rules", "2s")
        host_port = live.url.removeprefix("http://")
        prometheus_config = prometheus_config_for(rules, host_port, f"127.0.0.1:{am_port}")
        config_file = tmp_path / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(prometheus_config))
        prom_port = free_port()
        stack.enter_context(
            running(
                [
                    prometheus_bin,
                    f"--config.file={config_file}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--rules.alert.resend-delay=1s",
                ],
                f"http://127.0.0.1:{prom_port}/-/ready",
                tmp_path / "prometheus.log",
            )
        )
        yield live, upstream, f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}", hook


def test_an_upstream_outage_fires_the_breaker_alert_and_its_end_resolves_it(
    outage_stack: Stack,
) -> None:
    live, upstream, prometheus, alertmanager, hook = outage_stack
    assert live.execute("outage", "hello")["status"] == "succeeded"
    eventually(lambda: query(prometheus, 'up{job="breakwater"}') == [1.0], "a first scrape")
    assert "AgentCircuitBreakerOpen" not in prometheus_alerts(prometheus)

    # The outage: every upstream call answers 503; two failures open the agent's breaker.
    set_faults(upstream, error_rate=1, error_status=503)
    for _ in range(3):
        assert live.execute("outage", "are you there?")["status"] in {"failed", "degraded"}
    status, breaker = live.call("GET", "/api/v1/agents/outage/breaker")
    assert status == 200, breaker

    eventually(
        lambda: prometheus_alerts(prometheus).get("AgentCircuitBreakerOpen") == "firing",
        "AgentCircuitBreakerOpen firing in Prometheus",
    )
    eventually(
        lambda: ("AgentCircuitBreakerOpen", "firing") in hook.alerts("/oncall"),
        "the firing alert at the on-call webhook (severity critical)",
    )
    (notified,) = [
        alert
        for alert in hook.notified("/oncall")
        if alert["labels"]["alertname"] == "AgentCircuitBreakerOpen"
    ]
    assert notified["labels"] == {
        "alertname": "AgentCircuitBreakerOpen",
        "agent": "outage",
        "severity": "critical",
        "breakwater_incident": "breaker:agent:outage",
    }
    assert notified["annotations"]["runbook_url"] == "docs/OPERATIONS.md#agentcircuitbreakeropen"
    # The outage goes on (the breaker refuses, or a probe fails): bad for availability. These
    # also make the error counters move after their series first appeared (on main a status's
    # series only exists from its first execution, and a counter's first value is no increase
    # to rate()).
    for _ in range(3):
        assert live.execute("outage", "still down?")["status"] in {"failed", "degraded"}
    # Breakwater opened its own breaker incident; Alertmanager routes the alert to Breakwater's
    # receiver too, which puts it on that incident's timeline instead of opening a second one.
    assert routed_to(alertmanager, "AgentCircuitBreakerOpen") == {"breakwater", "oncall"}
    eventually(lambda: alert_on_timeline(live), "the alert on the breaker incident's timeline")
    incident = breaker_incident(live)
    assert incident is not None
    assert (incident["severity"], incident["agent"], incident["status"]) == (
        "critical",
        "outage",
        "open",
    )

    # The outage ends: after the recovery time (1 s) a probe succeeds and the breaker closes.
    set_faults(upstream, error_rate=0)
    time.sleep(1.1)
    eventually(
        lambda: live.execute("outage", "back?")["status"] == "succeeded",
        "an execution succeeding after the outage",
    )
    status, breaker = live.call("GET", "/api/v1/agents/outage/breaker")
    assert (status, breaker["state"]) == (200, "closed")

    eventually(
        lambda: "AgentCircuitBreakerOpen" not in prometheus_alerts(prometheus),
        "AgentCircuitBreakerOpen resolved in Prometheus",
    )
    eventually(
        lambda: ("AgentCircuitBreakerOpen", "resolved") in hook.alerts("/oncall"),
        "the resolved alert at the on-call webhook",
    )
    eventually(
        lambda: (breaker_incident(live) or {}).get("status") == "resolved",
        "the breaker incident resolved",
    )

    # The recording rules read the live series: the outage's failures are availability errors,
    # no execution was slower than 2 s, and the objectives are the defaults.
    def ratios() -> dict[str, float]:
        return by_label(prometheus, 'agent:slo_error_ratio:rate5m{agent="outage"}', "sli")

    eventually(lambda: ratios().get("availability", 0) > 0, "an availability error ratio")
    assert ratios()["latency"] == 0
    assert by_label(prometheus, 'agent:slo_objective:ratio{agent="outage"}', "sli") == {
        "availability": 0.999,
        "latency": 0.95,
    }
