"""A real Alertmanager (Debian's ``prometheus-alertmanager``) notifies a listener; what it sent,
byte for byte, goes to the receiver: the payloads of the unit tests are the real shape."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

from incidents.models import Incident
from tests.conftest import require_service
from tests.live import free_port, wait_http

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG = """
route:
  receiver: breakwater
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: breakwater
    webhook_configs:
      - url: http://127.0.0.1:{listener}/hook
        send_resolved: true
        max_alerts: 100
"""


def _port() -> int:
    """A free port; inside ``BREAKWATER_TEST_PORTS`` (``low-high``) when that is set (a shared
    machine that gives each test run its own range)."""
    span = os.environ.get("BREAKWATER_TEST_PORTS")
    if not span:
        return free_port()
    low, high = (int(part) for part in span.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in BREAKWATER_TEST_PORTS={span}")


class Listener(ThreadingHTTPServer):
    bodies: list[bytes]


class _Hook(BaseHTTPRequestHandler):
    server: Listener

    def do_POST(self) -> None:
        self.server.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener(("127.0.0.1", _port()), _Hook)
    server.bodies = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def alertmanager(listener: Listener, tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    require_service("Alertmanager", binary is not None, "apt-get install prometheus-alertmanager")
    assert binary is not None
    config = tmp_path / "alertmanager.yml"
    config.write_text(CONFIG.format(listener=listener.server_address[1]))
    port = _port()
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/-/ready")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def _post_alert(base: str, *, ends: datetime | None = None) -> None:
    alert: dict[str, Any] = {
        "labels": {"alertname": "BreakwaterDrainerLag", "job": "breakwater", "severity": "page"},
        "annotations": {"summary": "Records wait for the database"},
        "startsAt": "2026-03-01T12:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat().replace("+00:00", "Z")
    request = urllib.request.Request(
        f"{base}/api/v2/alerts",
        data=json.dumps([alert]).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def _next_body(listener: Listener, count: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while len(listener.bodies) < count:
        assert time.monotonic() < deadline, "Alertmanager sent nothing"
        time.sleep(0.05)
    return dict(json.loads(listener.bodies[count - 1]))


async def _receive(key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await AsyncClient().post(
        "/api/v1/alerts/alertmanager",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.content
    return dict(response.json())


async def test_what_a_real_alertmanager_sends_opens_and_resolves_an_incident(
    alertmanager: str, listener: Listener
) -> None:
    from agents.access.services import api_key_create

    key = (await sync_to_async(api_key_create)(name="am", scopes=["operate"])).plaintext

    await sync_to_async(_post_alert)(alertmanager)
    firing = await sync_to_async(_next_body)(listener, 1)
    assert (firing["version"], firing["status"]) == ("4", "firing")
    opened = await _receive(key, firing)
    assert len(opened["opened"]) == 1
    assert (await _receive(key, firing))["unchanged"] == 1  # Alertmanager's retry

    ended = datetime.now(UTC) - timedelta(seconds=1)
    await sync_to_async(_post_alert)(alertmanager, ends=ended)
    done = await sync_to_async(_next_body)(listener, 2)
    assert done["status"] == "resolved"
    assert (await _receive(key, done))["resolved"] == opened["opened"]

    incident = await sync_to_async(Incident.objects.get)()
    assert incident.status == "resolved"
    assert incident.severity == "critical"
    assert incident.title == "Records wait for the database"
    assert incident.dedup_key.startswith("alertmanager:BreakwaterDrainerLag:")
    events = await sync_to_async(lambda: [e.kind for e in incident.events.all()])()
    assert events == ["opened", "resolved"]
