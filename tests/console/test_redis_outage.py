"""A stalled shared state is survived (distributed mode, end to end against a real `serve` and a
private redis-server that the test freezes with SIGSTOP).

Before: callers got text/plain 500s after up to 5 s each; the reservations queued during the
stall were applied once Redis resumed (0 successes for 30+ s, half the budget gone); rows were
left running. Now: a typed 503 within the command timeout (OpenAI format on /v1), nothing
applied afterwards, service back within seconds, one incident for the outage.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis

from tests.live import free_port, manage, private_redis, serve, wait_http

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 0, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 1}
agents:
  - {name: support, model: m, max_tokens: 50, daily_budget_usd: 1}
"""


def call(
    url: str, key: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any], float, str]:
    """(status, content type, JSON body, seconds, Retry-After)."""
    request = urllib.request.Request(
        url,
        data=body,
        headers={
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            **(headers or {}),
        },
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, answer, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, answer, raw = error.code, error.headers, error.read()
    elapsed = time.monotonic() - started
    return (
        status,
        answer.get("Content-Type", ""),
        json.loads(raw),
        elapsed,
        answer.get("Retry-After", ""),
    )


def get(url: str, key: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_stalled_redis_gets_typed_503s_fast_and_nothing_applied_after_it(tmp_path: Path) -> None:
    with private_redis() as (redis_url, redis_proc):
        env = {"REDIS_URL": redis_url}
        manage(tmp_path, "migrate", "--noinput", "-v0")
        manage(tmp_path, "apply", "-f", "-", stdin=DOC)
        key = manage(tmp_path, "create_api_key", "--name", "t", "--scopes", "execute,read").strip()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = serve(tmp_path, port, env)
        try:
            wait_http(f"{base}/healthz")
            rest = f"{base}/api/v1/agents/support/execute"
            v1 = f"{base}/v1/chat/completions"
            chat = json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi"}]})
            assert call(rest, key, b'{"input": "hi"}')[0] == 200

            redis_proc.send_signal(signal.SIGSTOP)
            stalled = [call(rest, key, b'{"input": "hi"}') for _ in range(4)]
            # A conversation (its history is in Redis) and an Idempotency-Key (its record is).
            stalled.append(call(rest, key, b'{"input": "hi", "session_id": "s1"}'))
            stalled.append(call(rest, key, b'{"input": "hi"}', {"Idempotency-Key": "k1"}))
            stalled_v1 = [call(v1, key, chat.encode()) for _ in range(3)]
            redis_proc.send_signal(signal.SIGCONT)

            for status, content_type, body, seconds, retry_after in stalled:
                assert (status, content_type.split(";")[0], retry_after) == (
                    503,
                    "application/json",
                    "1",
                )
                assert body["error"]["type"] == "state_unavailable"
                assert seconds < 2.0  # the command timeout is 0.25 s; the rest is a busy CI
            for status, content_type, body, seconds, _ in stalled_v1:
                assert (status, content_type.split(";")[0]) == (503, "application/json")
                assert body["error"]["type"] == "service_unavailable"
                assert body["error"]["code"] == "state_unavailable"
                assert seconds < 2.0

            # Back within seconds of Redis resuming.
            resumed = time.monotonic()
            while call(rest, key, b'{"input": "hi"}')[0] != 200:
                assert time.monotonic() - resumed < 5.0, "no success 5 s after Redis resumed"
                time.sleep(0.1)

            # What the stalled admissions would have taken was never applied.
            client = redis.Redis.from_url(redis_url)
            time.sleep(2.0)  # the background abandon calls (retried every second) reach Redis
            leases = [k for k in client.scan_iter(match="bw:lease:*") if client.zcard(k)]
            assert leases == []
            for window in client.scan_iter(match="bw:bg:budget:*"):
                if not window.endswith(b":x"):
                    assert int(client.hget(window, "reserved") or 0) == 0

            # One incident for the outage, resolved once Redis answered again.
            incidents = [
                i
                for i in get(f"{base}/api/v1/incidents", key)["items"]
                if i["kind"] == "dependency_down"
            ]
            assert len(incidents) == 1
            assert incidents[0]["status"] == "resolved"
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
