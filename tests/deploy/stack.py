"""A live Breakwater for the deploy tests: ``manage.py serve`` in embedded mode on its own var
directory (tests/live.py), with a config applied and an API key, and fakellm upstreams in
processes of their own."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.live import ROOT, free_port, manage, serve, wait_http


@dataclass(frozen=True)
class Breakwater:
    url: str
    key: str  # scopes read, execute, operate
    var_dir: Path

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """An API call with the key: its status and its JSON body (None when empty)."""
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None

    def execute(self, agent: str, text: str) -> dict[str, Any]:
        status, body = self.call("POST", f"/api/v1/agents/{agent}/execute", {"input": text})
        assert status == 200, body
        result: dict[str, Any] = body
        return result

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as response:
            return str(response.read().decode())


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@contextlib.contextmanager
def breakwater(var_dir: Path, config: str) -> Iterator[Breakwater]:
    """Migrate, apply ``config`` (config as code), create a key, serve; stopped on exit."""
    manage(var_dir, "migrate", "--noinput", "-v0")
    manage(var_dir, "apply", "-f", "-", stdin=config)
    key = manage(
        var_dir, "create_api_key", "--name", "deploy-tests", "--scopes", "read,execute,operate"
    ).strip()
    port = free_port()
    process = serve(var_dir, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield Breakwater(f"http://127.0.0.1:{port}", key, var_dir)
    finally:
        _stop(process)


@contextlib.contextmanager
def fakellm(*flags: str) -> Iterator[str]:
    """A fakellm server (docs/FAKELLM.md) with ``flags``; its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "agents.devtools.fakellm", "--port", str(port), *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/_admin/stats")
        yield url
    finally:
        _stop(process)


def set_faults(upstream: str, **faults: Any) -> None:
    """Replace a fakellm's fault configuration (PUT /_admin/faults)."""
    request = urllib.request.Request(
        upstream + "/_admin/faults",
        method="PUT",
        data=json.dumps(faults).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
