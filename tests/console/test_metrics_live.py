"""``/metrics`` of real ``serve`` processes in multiprocess mode (docs/DECISIONS.md #16): every
series is there from the first scrape of a fresh process (the SLO objectives as configured),
counters of known agents start at 0, a changed SLO shows at the next scrape of any process, a
deleted agent's series are gone at the next scrape, django-prometheus' ``django_http_*`` count
the console and API requests (not the lean execute door), two processes on one host agree, and
the drain-lag and process gauges say what happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import prepare_multiprocess_dir
from tests.live import ROOT, embedded_env, free_port, manage, private_redis, serve, wait_http

DOC = """
providers:
  - {name: sim, kind: simulated, simulation: {latency_ms: 5, error_rate: 0, seed: 1}}
models:
  - {name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
  - {name: m, provider: sim, upstream_model: m-2, input_usd_per_mtok: 1, output_usd_per_mtok: 2}
agents:
  - {name: alpha, model: m, daily_budget_usd: 40, slo: {availability: 0.99, latency_ms: 1200}}
  - {name: beta, model: m, daily_budget_usd: 30}
budgets:
  - {scope: global, daily_limit_usd: 1000}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        body = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def labelled(samples: Samples, label: str, wanted: str) -> list[str]:
    return sorted({name for name, labels in samples if (label, wanted) in labels})


def http(
    port: int, method: str, path: str, key: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def serving(var_dir: Path, env: dict[str, str]) -> Iterator[int]:
    port = free_port()
    process = serve(var_dir, port, env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def deployment(var_dir: Path, env: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Migrate, apply DOC, and create an admin key; the key and the deployment ids."""
    manage(var_dir, "migrate", "--noinput", "-v0", env=env)
    manage(var_dir, "apply", "-f", "-", stdin=DOC, env=env)
    key = manage(
        var_dir, "create_api_key", "--name", "t", "--scopes", "read,execute,operate,admin", env=env
    ).split()[0]
    ids = manage(
        var_dir,
        "shell",
        "-c",
        "from agents.models import ModelDeployment as D;"
        "print(' '.join(str(i) for i in D.objects.values_list('id', flat=True)))",
        env=env,
    )
    return key, ids.strip().splitlines()[-1].split()


def test_a_fresh_serve_exports_every_series_and_drops_a_deleted_agents(tmp_path: Path) -> None:
    key, deployments = deployment(tmp_path)
    multiproc = prepare_multiprocess_dir(tmp_path / "prometheus")

    with serving(tmp_path, {"PROMETHEUS_MULTIPROC_DIR": str(multiproc)}) as port:
        first = scrape(port)

        for agent in ("alpha", "beta"):
            assert value(first, "agent_circuit_breaker_state", agent=agent) == 0
            for name in ("succeeded", "degraded", "failed"):
                assert value(first, "agent_requests_total", agent=agent, status=name) == 0
            assert value(first, "agent_request_duration_seconds_bucket", agent=agent, le="2.0") == 0
            assert value(first, "agent_cost_dollars_total", agent=agent) == 0
        for ident in deployments:
            assert value(first, "agent_deployment_breaker_state", deployment=ident) == 0
        for scope, limit in {"global": 1000, "agent:alpha": 40, "agent:beta": 30}.items():
            assert value(first, "agent_budget_remaining_dollars", scope=scope) == limit
            assert value(first, "agent_budget_limit_dollars", scope=scope) == limit
            assert value(first, "agent_budget_forecast_dollars", scope=scope) == 0
        assert value(first, "agent_slo_objective_ratio", agent="alpha", sli="availability") == 0.99
        assert value(first, "agent_slo_latency_threshold_seconds", agent="alpha") == 1.2
        assert value(first, "agent_slo_objective_ratio", agent="beta", sli="availability") == 0.999
        assert value(first, "agent_slo_objective_ratio", agent="beta", sli="latency") == 0.95
        assert value(first, "agent_slo_latency_threshold_seconds", agent="beta") == 2.0
        assert value(first, "breakwater_processes", role="serve") == 1
        assert ("breakwater_processes", frozenset({("role", "worker")})) not in first  # embedded
        assert value(first, "breakwater_drain_lag_seconds") is not None

        status, result = http(port, "POST", "/api/v1/agents/alpha/execute", key, {"input": "hi"})
        assert status == 200, result
        assert result["status"] == "succeeded"
        assert http(port, "GET", "/api/v1/agents", key)[0] == 200
        after = scrape(port)

        assert value(after, "agent_requests_total", agent="alpha", status="succeeded") == 1
        assert value(after, "agent_requests_total", agent="beta", status="succeeded") == 0
        assert value(after, "agent_cost_dollars_total", agent="alpha") == pytest.approx(
            float(result["cost_usd"])
        )
        # django-prometheus counts the API's Django views; the lean execute door is not Django's.
        views = {
            dict(labels)["view"]
            for name, labels in after
            if name == "django_http_requests_total_by_view_transport_method_total"
        }
        assert any(view.endswith(":agent_list") for view in views), views
        assert not any("execute" in view for view in views), views
        assert any(name.startswith("django_db_") for name, _ in after)
        assert value(after, "django_migrations_unapplied_total", connection="default") == 0

        status, _ = http(port, "DELETE", "/api/v1/agents/beta", key)
        assert status == 204
        gone = scrape(port)

        assert labelled(gone, "agent", "beta") == []
        assert labelled(gone, "scope", "agent:beta") == []
        assert value(gone, "agent_requests_total", agent="alpha", status="succeeded") == 1
        assert value(gone, "agent_circuit_breaker_state", agent="alpha") == 0


def test_two_serves_on_one_host_agree_and_the_drain_lag_counts_what_waits(
    tmp_path: Path,
) -> None:
    with private_redis() as (redis_url, _):
        env = {"REDIS_URL": redis_url}
        key, deployments = deployment(tmp_path, env)
        multiproc = prepare_multiprocess_dir(tmp_path / "prometheus")
        # Nothing drains the journal: the records wait in the Redis stream.
        shared = {**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "BREAKWATER_SERVE_DRAINS": "0"}
        with serving(tmp_path, shared) as one, serving(tmp_path, shared) as two:
            assert value(scrape(one), "breakwater_drain_lag_seconds") == 0

            status, result = http(one, "POST", "/api/v1/agents/alpha/execute", key, {"input": "x"})
            assert (status, result["status"]) == (200, "succeeded")
            status, _ = http(two, "POST", "/api/v1/agents/beta/breaker", key, {"action": "force_open", "reason": "drill"})  # fmt: skip
            assert status == 200
            status, _ = http(
                one, "POST", f"/api/v1/deployments/{deployments[0]}/breaker", key,
                {"action": "force_open", "reason": "drill"},
            )  # fmt: skip
            assert status == 200
            status, _ = http(
                two, "PATCH", "/api/v1/agents/alpha", key, {"slo": {"latency_ms": 900}}
            )
            assert status == 200
            time.sleep(1.1)  # the waiting record ages by at least a second

            seen = [scrape(one), scrape(two)]

            def ours(samples: Samples) -> Samples:
                # django_* count the scrapes themselves; the lag is read at a different instant.
                return {
                    k: v
                    for k, v in samples.items()
                    if k[0].startswith(("agent_", "breakwater_processes"))
                }

            assert ours(seen[0]) == ours(seen[1])
            for samples in seen:
                assert (
                    value(samples, "agent_requests_total", agent="alpha", status="succeeded") == 1
                )
                assert value(samples, "agent_circuit_breaker_state", agent="beta") == 2
                assert value(samples, "agent_circuit_breaker_state", agent="alpha") == 0
                assert (
                    value(samples, "agent_deployment_breaker_state", deployment=deployments[0]) == 2
                )
                assert (
                    value(samples, "agent_deployment_breaker_state", deployment=deployments[1]) == 0
                )
                assert value(samples, "agent_slo_latency_threshold_seconds", agent="alpha") == 0.9
                assert value(samples, "agent_slo_latency_threshold_seconds", agent="beta") == 2.0
                assert value(samples, "breakwater_processes", role="serve") == 2
                assert value(samples, "breakwater_processes", role="worker") == 0  # none runs
                assert (value(samples, "breakwater_drain_lag_seconds") or 0) >= 1.0

            # A standalone recorder: it drains the stream and counts as a live "drainer".
            drainer = subprocess.Popen(
                [sys.executable, "manage.py", "drain_records"],
                cwd=ROOT,
                env=embedded_env(tmp_path, **env),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                end = time.monotonic() + 30
                while True:
                    samples = scrape(two)
                    lag = value(samples, "breakwater_drain_lag_seconds")
                    if lag == 0 and value(samples, "breakwater_processes", role="drainer") == 1:
                        break
                    assert time.monotonic() < end, (lag, labelled(samples, "role", "drainer"))
                    time.sleep(0.2)
            finally:
                os.killpg(drainer.pid, signal.SIGTERM)
                drainer.wait(timeout=30)
            assert value(scrape(one), "breakwater_processes", role="drainer") == 0  # it stopped
