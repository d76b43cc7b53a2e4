from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from django.test import AsyncRequestFactory
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from agents.events import CompositeEvents
from agents.metrics import (
    MetricsEvents,
    cleanup_dead_processes,
    count_retries,
    prepare_multiprocess_dir,
    set_budget_remaining,
)
from agents.runtime.errors import FallbackReason
from agents.runtime.state import BreakerState, Transition
from agents.runtime.types import ExecutionResult, ExecutionStatus, Step, Usage
from console import metrics_view

ROOT = Path(__file__).resolve().parents[2]


def value(name: str, **labels: str) -> float:
    """A sample of the global registry; 0 when it was never set."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def result(
    agent: str,
    execution_id: str = "ex-1",
    *,
    status: ExecutionStatus = ExecutionStatus.SUCCEEDED,
    latency_ms: float = 1234.0,
    usage: Usage | None = None,
    cost: str = "0.0123",
    cached: bool = False,
    fallback_reason: FallbackReason | None = None,
    steps: tuple[Step, ...] = (),
) -> ExecutionResult:
    return ExecutionResult(
        execution_id=execution_id,
        agent=agent,
        status=status,
        output="hello",
        model="gpt-4o-mini",
        deployment=1,
        attempts=max(1, sum(step.kind == "attempt" for step in steps)),
        fallback_used=fallback_reason is not None,
        fallback_reason=fallback_reason,
        cached=cached,
        usage=usage if usage is not None else Usage(100, 50),
        cost_usd=Decimal(cost),
        latency_ms=latency_ms,
        created_at=1_700_000_000.0,
        finished_at=1_700_000_001.234,
        steps=steps,
    )


def transition(key: str, to_state: BreakerState) -> Transition:
    return Transition(key, BreakerState.CLOSED, to_state, at=1_700_000_000.0, reason="test")


# --- MetricsEvents ---------------------------------------------------------------------------


def test_a_finished_execution_counts_the_request_its_duration_tokens_and_cost() -> None:
    agent = "metrics-finished"
    before_requests = value("agent_requests_total", agent=agent, status="succeeded")
    before_count = value("agent_request_duration_seconds_count", agent=agent)
    before_sum = value("agent_request_duration_seconds_sum", agent=agent)
    before_le_1 = value("agent_request_duration_seconds_bucket", agent=agent, le="1.0")
    before_le_1_5 = value("agent_request_duration_seconds_bucket", agent=agent, le="1.5")
    before_input = value("agent_llm_tokens_total", agent=agent, type="input")
    before_output = value("agent_llm_tokens_total", agent=agent, type="output")
    before_cost = value("agent_cost_dollars_total", agent=agent)

    MetricsEvents().execution_finished(result(agent, usage=Usage(100, 50), cost="0.0123"))

    assert value("agent_requests_total", agent=agent, status="succeeded") == before_requests + 1
    assert value("agent_request_duration_seconds_count", agent=agent) == before_count + 1
    assert value("agent_request_duration_seconds_sum", agent=agent) == pytest.approx(
        before_sum + 1.234
    )
    assert value("agent_request_duration_seconds_bucket", agent=agent, le="1.0") == before_le_1
    assert (
        value("agent_request_duration_seconds_bucket", agent=agent, le="1.5") == before_le_1_5 + 1
    )
    assert value("agent_llm_tokens_total", agent=agent, type="input") == before_input + 100
    assert value("agent_llm_tokens_total", agent=agent, type="output") == before_output + 50
    assert value("agent_cost_dollars_total", agent=agent) == pytest.approx(before_cost + 0.0123)


def test_the_status_label_is_the_final_status() -> None:
    agent = "metrics-status"
    before_failed = value("agent_requests_total", agent=agent, status="failed")
    before_succeeded = value("agent_requests_total", agent=agent, status="succeeded")

    MetricsEvents().execution_finished(result(agent, status=ExecutionStatus.FAILED))

    assert value("agent_requests_total", agent=agent, status="failed") == before_failed + 1
    assert value("agent_requests_total", agent=agent, status="succeeded") == before_succeeded


def test_histogram_buckets_span_llm_latencies_from_50ms_to_a_minute() -> None:
    agent = "metrics-buckets"
    MetricsEvents().execution_finished(result(agent, latency_ms=10.0))
    assert value("agent_request_duration_seconds_bucket", agent=agent, le="0.05") == 1
    assert value("agent_request_duration_seconds_bucket", agent=agent, le="60.0") == 1
    assert (
        REGISTRY.get_sample_value(
            "agent_request_duration_seconds_bucket", {"agent": agent, "le": "120.0"}
        )
        is None
    )


def test_only_a_cached_execution_counts_a_cache_hit() -> None:
    agent = "metrics-cache"
    before = value("agent_cache_hits_total", agent=agent)
    events = MetricsEvents()

    events.execution_finished(result(agent, "ex-1", cached=False))
    assert value("agent_cache_hits_total", agent=agent) == before
    events.execution_finished(result(agent, "ex-2", cached=True, usage=Usage(0, 0), cost="0"))
    assert value("agent_cache_hits_total", agent=agent) == before + 1


def test_a_degraded_execution_counts_a_fallback_by_reason() -> None:
    agent = "metrics-fallback"
    before_open = value("agent_fallbacks_total", agent=agent, reason="circuit_open")
    before_timeout = value("agent_fallbacks_total", agent=agent, reason="timeout")
    events = MetricsEvents()

    events.execution_finished(
        result(agent, "ex-1", status=ExecutionStatus.DEGRADED, fallback_reason="circuit_open")
    )
    events.execution_finished(result(agent, "ex-2"))

    assert value("agent_fallbacks_total", agent=agent, reason="circuit_open") == before_open + 1
    assert value("agent_fallbacks_total", agent=agent, reason="timeout") == before_timeout


def test_retries_count_repeated_attempts_on_a_model_but_not_switches_to_a_fallback() -> None:
    agent = "metrics-retries"
    steps = (
        Step("attempt", model="primary", deployment=1, outcome="Timeout"),
        Step("attempt", model="primary", deployment=2, outcome="ProviderError"),
        Step("fallback", model="backup", outcome="timeout"),
        Step("attempt", model="backup", deployment=3, outcome="RateLimited"),
        Step("attempt", model="backup", deployment=3, outcome="ok"),
    )
    before = value("agent_retries_total", agent=agent)

    MetricsEvents().execution_finished(result(agent, fallback_reason="timeout", steps=steps))

    # 4 attempts: the first, one retry on primary, the switch to backup, one retry on backup.
    assert value("agent_retries_total", agent=agent) == before + 2


def test_an_execution_without_retries_leaves_the_retry_counter_alone() -> None:
    agent = "metrics-no-retries"
    before = value("agent_retries_total", agent=agent)
    MetricsEvents().execution_finished(
        result(agent, steps=(Step("attempt", model="m", deployment=1, outcome="ok"),))
    )
    assert value("agent_retries_total", agent=agent) == before


def test_a_call_after_a_successful_one_is_not_a_retry() -> None:
    # A tool-loop round calls the same model again after it answered.
    steps = (
        Step("attempt", model="m", outcome="ok"),
        Step("tool", outcome="ok"),
        Step("attempt", model="m", outcome="ok"),
    )
    assert count_retries(steps) == 0


def test_failed_attempts_count_upstream_errors_by_deployment_and_kind() -> None:
    steps = (
        Step("attempt", model="primary", deployment=901, outcome="QuotaExhausted"),
        Step("fallback", model="backup", outcome="llm_error"),
        Step("attempt", model="backup", deployment=902, outcome="RateLimited"),
        Step(
            "attempt",
            model="backup",
            deployment=902,
            outcome="ProviderError",
            detail="transport error: ClientConnectorError: refused",
        ),
        Step("attempt", model="backup", deployment=902, outcome="ProviderError", detail="HTTP 502"),
        Step("attempt", model="backup", deployment=902, outcome="ok"),
    )
    kinds = [
        ("901", "quota"),
        ("902", "rate_limited"),
        ("902", "connection"),
        ("902", "server_error"),
    ]
    before = {k: value("agent_upstream_errors_total", deployment=k[0], kind=k[1]) for k in kinds}

    MetricsEvents().execution_finished(
        result("metrics-upstream", fallback_reason="llm_error", steps=steps)
    )

    for deployment, kind in kinds:
        assert value("agent_upstream_errors_total", deployment=deployment, kind=kind) == (
            before[(deployment, kind)] + 1
        ), kind
    assert value("agent_upstream_errors_total", deployment="902", kind="other") == 0


def test_a_degraded_execution_counts_its_quota_error_and_nothing_is_counted_for_a_tool() -> None:
    steps = (
        Step("attempt", model="m", deployment=903, outcome="QuotaExhausted"),
        Step("tool", outcome="ToolFailed"),
    )
    before = value("agent_upstream_errors_total", deployment="903", kind="quota")
    MetricsEvents().execution_finished(
        result("metrics-upstream", status=ExecutionStatus.DEGRADED, steps=steps)
    )
    assert value("agent_upstream_errors_total", deployment="903", kind="quota") == before + 1


def test_active_requests_follow_started_and_finished_executions() -> None:
    agent = "metrics-active"
    base = value("agent_active_requests", agent=agent)
    events = MetricsEvents()

    events.execution_started("ex-1", agent)
    events.execution_started("ex-2", agent)
    assert value("agent_active_requests", agent=agent) == base + 2

    events.execution_finished(result(agent, "ex-1"))
    assert value("agent_active_requests", agent=agent) == base + 1
    events.execution_finished(result(agent, "ex-2"))
    assert value("agent_active_requests", agent=agent) == base


def test_a_finish_without_a_start_or_twice_never_drives_active_requests_negative() -> None:
    agent = "metrics-active-unmatched"
    base = value("agent_active_requests", agent=agent)
    events = MetricsEvents()

    events.execution_finished(result(agent, "never-started"))
    events.execution_started("ex-1", agent)
    events.execution_finished(result(agent, "ex-1"))
    events.execution_finished(result(agent, "ex-1"))

    assert value("agent_active_requests", agent=agent) == base


def test_agent_breaker_transitions_set_the_gauge_to_0_1_or_2() -> None:
    events = MetricsEvents()
    expected = {
        BreakerState.OPEN: 2,
        BreakerState.HALF_OPEN: 1,
        BreakerState.CLOSED: 0,
        BreakerState.FORCED_OPEN: 2,
        BreakerState.FORCED_CLOSED: 0,
        BreakerState.DISABLED: 0,
    }
    for state, gauge in expected.items():
        events.breaker_transition(transition("agent:metrics-breaker", state))
        assert value("agent_circuit_breaker_state", agent="metrics-breaker") == gauge, state


def test_deployment_breaker_transitions_set_the_deployment_gauge_by_id() -> None:
    events = MetricsEvents()
    events.breaker_transition(transition("deployment:9071", BreakerState.OPEN))
    assert value("agent_deployment_breaker_state", deployment="9071") == 2
    assert REGISTRY.get_sample_value("agent_circuit_breaker_state", {"agent": "9071"}) is None

    events.breaker_transition(transition("deployment:9071", BreakerState.HALF_OPEN))
    assert value("agent_deployment_breaker_state", deployment="9071") == 1


def test_a_transition_with_an_unknown_key_is_ignored() -> None:
    MetricsEvents().breaker_transition(transition("model:whatever", BreakerState.OPEN))
    assert REGISTRY.get_sample_value("agent_circuit_breaker_state", {"agent": "whatever"}) is None
    assert (
        REGISTRY.get_sample_value("agent_deployment_breaker_state", {"deployment": "whatever"})
        is None
    )


def test_metrics_events_swallow_errors_instead_of_raising() -> None:
    events = MetricsEvents()
    events.execution_finished(None)  # type: ignore[arg-type]
    events.breaker_transition(None)  # type: ignore[arg-type]


def test_the_budget_setter_publishes_remaining_dollars_per_scope() -> None:
    set_budget_remaining("global", Decimal("812.50"))
    assert value("agent_budget_remaining_dollars", scope="global") == 812.5
    set_budget_remaining("global", Decimal("0"))
    assert value("agent_budget_remaining_dollars", scope="global") == 0


# --- CompositeEvents -------------------------------------------------------------------------


class Recording:
    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def breaker_transition(self, transition: Transition) -> None:
        self.calls.append(("breaker_transition", transition.key))

    def execution_started(self, execution_id: str, agent: str) -> None:
        self.calls.append(("execution_started", execution_id))

    def execution_token(self, execution_id: str, text: str) -> None:
        self.calls.append(("execution_token", text))

    def execution_finished(self, result: ExecutionResult) -> None:
        self.calls.append(("execution_finished", result.execution_id))

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        self.calls.append(("dependency_changed", kind))


class Broken:
    def breaker_transition(self, transition: Transition) -> None:
        raise RuntimeError("boom")

    def execution_started(self, execution_id: str, agent: str) -> None:
        raise RuntimeError("boom")

    def execution_token(self, execution_id: str, text: str) -> None:
        raise RuntimeError("boom")

    def execution_finished(self, result: ExecutionResult) -> None:
        raise RuntimeError("boom")

    def dependency_changed(self, kind: str, available: bool, detail: str) -> None:
        raise RuntimeError("boom")


def test_composite_events_reach_every_sink_even_when_one_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, last = Recording(), Recording()
    events = CompositeEvents(first, Broken(), last)

    events.execution_started("ex-1", "composite")
    events.execution_token("ex-1", "hi")
    events.breaker_transition(transition("agent:composite", BreakerState.OPEN))
    events.execution_finished(result("composite", "ex-1"))

    expected = [
        ("execution_started", "ex-1"),
        ("execution_token", "hi"),
        ("breaker_transition", "agent:composite"),
        ("execution_finished", "ex-1"),
    ]
    assert first.calls == expected
    assert last.calls == expected
    assert sum("event sink" in record.message for record in caplog.records) == 4


def test_composite_events_feed_the_metrics() -> None:
    agent = "metrics-composite"
    before = value("agent_requests_total", agent=agent, status="succeeded")
    CompositeEvents(Broken(), MetricsEvents()).execution_finished(result(agent))
    assert value("agent_requests_total", agent=agent, status="succeeded") == before + 1


# --- /metrics --------------------------------------------------------------------------------


async def test_the_metrics_view_answers_the_text_exposition_with_every_metric_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    MetricsEvents().execution_finished(result("metrics-view"))

    response = await metrics_view.metrics(AsyncRequestFactory().get("/metrics"))

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    for name in (
        "agent_requests_total",
        "agent_request_duration_seconds_bucket",
        "agent_active_requests",
        "agent_llm_tokens_total",
        "agent_cost_dollars_total",
        "agent_circuit_breaker_state",
        "agent_deployment_breaker_state",
        "agent_budget_remaining_dollars",
        "agent_cache_hits_total",
        "agent_fallbacks_total",
        "agent_retries_total",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')} " in body or f"# TYPE {name} " in body
    assert 'agent_requests_total{agent="metrics-view",status="succeeded"}' in body


async def test_the_metrics_view_speaks_openmetrics_when_asked() -> None:
    request = AsyncRequestFactory().get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    response = await metrics_view.metrics(request)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")


async def test_the_metrics_view_refuses_post() -> None:
    response = await metrics_view.metrics(AsyncRequestFactory().post("/metrics"))
    assert response.status_code == 405


# --- multiprocess mode -----------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from decimal import Decimal

    from agents.metrics import MetricsEvents, prepare_multiprocess_dir
    from agents.runtime.state import BreakerState, Transition
    from agents.runtime.types import ExecutionResult, ExecutionStatus, Usage

    count, breaker = int(sys.argv[1]), sys.argv[2]
    events = MetricsEvents()
    events.execution_started("still-running", "mp-agent")  # never finishes: the process dies
    for index in range(count):
        events.execution_finished(ExecutionResult(
            execution_id=f"ex-{index}", agent="mp-agent", status=ExecutionStatus.SUCCEEDED,
            output="", model="m", deployment=1, attempts=1, fallback_used=False,
            fallback_reason=None, cached=False, usage=Usage(10, 5), cost_usd=Decimal("0.001"),
            latency_ms=200.0, created_at=0.0, finished_at=0.2,
        ))
    if breaker != "-":
        events.breaker_transition(
            Transition("agent:mp-agent", BreakerState.CLOSED, BreakerState(breaker), 0.0, "")
        )
    """
)


def run_workers(directory: Path, count: int, breakers: list[str]) -> list[int]:
    """Run one worker process per entry of ``breakers`` at once; return their (dead) pids."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the metrics need no Django
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(count), breaker],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for breaker in breakers
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=60)
        assert worker.returncode == 0, stderr
    return [worker.pid for worker in workers]


def collect(directory: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


@pytest.fixture
def multiproc_dir(tmp_path: Path) -> Path:
    return prepare_multiprocess_dir(tmp_path / "prometheus")


def test_counters_from_several_processes_add_up(multiproc_dir: Path) -> None:
    run_workers(multiproc_dir, 40, ["-", "-", "-"])

    registry = collect(multiproc_dir)
    labels = {"agent": "mp-agent", "status": "succeeded"}
    assert registry.get_sample_value("agent_requests_total", labels) == 120
    assert (
        registry.get_sample_value("agent_request_duration_seconds_count", {"agent": "mp-agent"})
        == 120
    )
    assert (
        registry.get_sample_value("agent_llm_tokens_total", {"agent": "mp-agent", "type": "input"})
        == 1200
    )
    assert registry.get_sample_value(
        "agent_cost_dollars_total", {"agent": "mp-agent"}
    ) == pytest.approx(0.12)


def test_cleanup_forgets_dead_processes_active_requests_but_keeps_their_counts(
    multiproc_dir: Path,
) -> None:
    pids = run_workers(multiproc_dir, 5, ["-", "-", "-"])
    # A live process's gauge file must survive; our parent runs as long as this test does.
    live_file = multiproc_dir / f"gauge_livesum_{os.getppid()}.db"
    shutil.copy(multiproc_dir / f"gauge_livesum_{pids[0]}.db", live_file)
    assert (
        collect(multiproc_dir).get_sample_value("agent_active_requests", {"agent": "mp-agent"}) == 4
    )

    assert cleanup_dead_processes(multiproc_dir) == sorted(pids)

    for pid in pids:
        assert not (multiproc_dir / f"gauge_livesum_{pid}.db").exists()
        assert (multiproc_dir / f"counter_{pid}.db").exists()
    assert live_file.exists()
    registry = collect(multiproc_dir)
    assert registry.get_sample_value("agent_active_requests", {"agent": "mp-agent"}) == 1
    assert (
        registry.get_sample_value(
            "agent_requests_total", {"agent": "mp-agent", "status": "succeeded"}
        )
        == 15
    )
    assert cleanup_dead_processes(multiproc_dir) == []


def test_the_breaker_gauge_reports_the_latest_transition_seen_by_any_process(
    multiproc_dir: Path,
) -> None:
    run_workers(multiproc_dir, 0, ["open"])
    run_workers(multiproc_dir, 0, ["closed"])  # a later process saw it close, then died
    cleanup_dead_processes(multiproc_dir)

    registry = collect(multiproc_dir)
    assert registry.get_sample_value("agent_circuit_breaker_state", {"agent": "mp-agent"}) == 0


def test_prepare_wipes_files_left_by_a_previous_run(multiproc_dir: Path) -> None:
    run_workers(multiproc_dir, 3, ["-"])
    assert list(multiproc_dir.glob("*.db"))

    prepare_multiprocess_dir(multiproc_dir)

    assert list(multiproc_dir.glob("*.db")) == []


async def test_the_metrics_view_merges_every_process_in_multiprocess_mode(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_workers(multiproc_dir, 7, ["-", "-", "-"])
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))

    response = await metrics_view.metrics(AsyncRequestFactory().get("/metrics"))

    assert response.status_code == 200
    body = response.content.decode()
    assert 'agent_requests_total{agent="mp-agent",status="succeeded"} 21.0' in body
    # The dead workers' in-flight executions were cleaned up before the scrape.
    assert 'agent_active_requests{agent="mp-agent"}' not in body
    # Only the merged files are exported, not this process's own registry.
    assert "metrics-view" not in body
