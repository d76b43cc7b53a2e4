from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import AsyncRequestFactory
from django.utils import timezone
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from agents.backends import state_for_jobs
from agents.config.apply import config_apply, config_parse
from agents.events import CompositeEvents
from agents.executions.recording import FileJournal, drain_files_once
from agents.executions.recording.files import journal_oldest_at
from agents.executions.recording.streams import stream_lag_s
from agents.metrics import (
    DURATION_BUCKETS,
    MetricsEvents,
    breaker_families,
    cleanup_dead_processes,
    complete_agent_families,
    count_retries,
    prepare_multiprocess_dir,
)
from agents.models import Agent, ModelDeployment, WorkerProcess
from agents.runtime.errors import FallbackReason
from agents.runtime.state import (
    BreakerConfig,
    BreakerState,
    BudgetHold,
    Completion,
    Transition,
    WindowInit,
    agent_breaker_key,
    deployment_breaker_key,
)
from agents.runtime.types import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    Step,
    Usage,
)
from agents.services import agent_delete, agent_update
from budgets.selectors import budget_list, budget_scope_label, budget_spans
from console import metrics_view
from core.redis import close_loop_clients

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


def test_a_breaker_transition_sets_no_gauge_in_the_process() -> None:
    # The breaker gauges are read from the shared state at scrape time (whichever process saw
    # the transition); a process-held copy would go stale or survive a deleted agent.
    MetricsEvents().breaker_transition(transition("agent:metrics-breaker", BreakerState.OPEN))
    assert (
        REGISTRY.get_sample_value("agent_circuit_breaker_state", {"agent": "metrics-breaker"})
        is None
    )


def test_metrics_events_swallow_errors_instead_of_raising() -> None:
    events = MetricsEvents()
    events.execution_finished(None)  # type: ignore[arg-type]
    events.breaker_transition(None)  # type: ignore[arg-type]


# --- scrape-time families --------------------------------------------------------------------


def family(families: list[Metric], name: str) -> Metric:
    (found,) = [f for f in families if f.name == name]
    return found


def samples(metric: Metric) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in metric.samples}


def test_a_known_agent_without_traffic_gets_a_zero_of_every_per_agent_series() -> None:
    families = list(complete_agent_families([], frozenset({"quiet"})))

    requests = samples(family(families, "agent_requests"))
    assert requests == {
        ("agent_requests_total", (("agent", "quiet"), ("status", status))): 0.0
        for status in ("succeeded", "degraded", "failed")
    }
    reasons = {dict(labels)["reason"] for _, labels in samples(family(families, "agent_fallbacks"))}
    assert reasons == {
        "circuit_open", "budget_exceeded", "rate_limited", "timeout", "llm_error", "tool_error"
    }  # fmt: skip
    types = {dict(labels)["type"] for _, labels in samples(family(families, "agent_llm_tokens"))}
    assert types == {"input", "output"}
    for name in ("agent_cost_dollars", "agent_cache_hits", "agent_retries"):
        assert samples(family(families, name)) == {(f"{name}_total", (("agent", "quiet"),)): 0.0}
    assert samples(family(families, "agent_active_requests")) == {
        ("agent_active_requests", (("agent", "quiet"),)): 0.0
    }
    duration = samples(family(families, "agent_request_duration_seconds"))
    buckets = {
        dict(labels)["le"]
        for name, labels in duration
        if name == "agent_request_duration_seconds_bucket"
    }
    assert {"0.5", "1.0", "2.0", "60.0", "+Inf"} <= buckets
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert set(duration.values()) == {0.0}
    assert duration[("agent_request_duration_seconds_count", (("agent", "quiet"),))] == 0.0


def test_counted_samples_stay_and_get_no_zero_twin() -> None:
    counted = Metric("agent_requests", "d", "counter")
    counted.add_sample("agent_requests_total", {"agent": "busy", "status": "succeeded"}, 7.0)

    (requests,) = [
        f
        for f in complete_agent_families([counted], frozenset({"busy"}))
        if f.name == "agent_requests"
    ]

    values = samples(requests)
    assert values[("agent_requests_total", (("agent", "busy"), ("status", "succeeded")))] == 7.0
    assert values[("agent_requests_total", (("agent", "busy"), ("status", "failed")))] == 0.0
    assert len(requests.samples) == 3


def test_samples_of_an_agent_that_no_longer_exists_are_dropped() -> None:
    counted = Metric("agent_cost_dollars", "d", "counter")
    counted.add_sample("agent_cost_dollars_total", {"agent": "deleted"}, 1.5)
    counted.add_sample("agent_cost_dollars_total", {"agent": "kept"}, 2.5)
    other = Metric("django_db_execute", "d", "counter")
    other.add_sample("django_db_execute_total", {"alias": "default", "vendor": "sqlite"}, 3.0)

    families = list(complete_agent_families([counted, other], frozenset({"kept"})))

    assert samples(family(families, "agent_cost_dollars")) == {
        ("agent_cost_dollars_total", (("agent", "kept"),)): 2.5
    }
    assert family(families, "django_db_execute").samples == other.samples


def test_an_unknown_catalog_leaves_the_processes_families_as_they_are() -> None:
    counted = Metric("agent_cost_dollars", "d", "counter")
    counted.add_sample("agent_cost_dollars_total", {"agent": "anyone"}, 1.5)

    families = list(complete_agent_families([counted], None))

    assert families == [counted]


def test_breaker_families_map_every_state_to_0_1_or_2() -> None:
    states = {
        "closed": BreakerState.CLOSED,
        "half-open": BreakerState.HALF_OPEN,
        "open": BreakerState.OPEN,
        "forced-open": BreakerState.FORCED_OPEN,
        "forced-closed": BreakerState.FORCED_CLOSED,
        "disabled": BreakerState.DISABLED,
    }
    agents, deployments = breaker_families(states, {7: BreakerState.OPEN})

    assert samples(agents) == {
        ("agent_circuit_breaker_state", (("agent", "closed"),)): 0,
        ("agent_circuit_breaker_state", (("agent", "half-open"),)): 1,
        ("agent_circuit_breaker_state", (("agent", "open"),)): 2,
        ("agent_circuit_breaker_state", (("agent", "forced-open"),)): 2,
        ("agent_circuit_breaker_state", (("agent", "forced-closed"),)): 0,
        ("agent_circuit_breaker_state", (("agent", "disabled"),)): 0,
    }
    assert samples(deployments) == {("agent_deployment_breaker_state", (("deployment", "7"),)): 2}


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

DOC = """
providers:
  - {{name: sim-{tag}, kind: simulated}}
models:
  - {{name: m-{tag}, provider: sim-{tag}, upstream_model: a, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
  - {{name: m-{tag}, provider: sim-{tag}, upstream_model: b, input_usd_per_mtok: 1, output_usd_per_mtok: 2}}
agents:
  - {{name: support-{tag}, model: m-{tag}, daily_budget_usd: 50,
     slo: {{availability: 0.995, latency_ms: 1500}}}}
  - {{name: billing-{tag}, model: m-{tag}}}
budgets:
  - {{scope: global, daily_limit_usd: 1000, monthly_limit_usd: 20000}}
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass(frozen=True)
class World:
    support: str
    billing: str
    deployments: tuple[int, ...]
    budgets: dict[str, int]  # scope label -> id


def _world() -> World:
    tag = uuid.uuid4().hex[:8]
    config_apply(document=config_parse(DOC.format(tag=tag)))
    return World(
        support=f"support-{tag}",
        billing=f"billing-{tag}",
        deployments=tuple(
            ModelDeployment.objects.filter(name=f"m-{tag}")
            .order_by("id")
            .values_list("id", flat=True)
        ),
        budgets={budget_scope_label(b): b.pk for b in budget_list()},
    )


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    yield await sync_to_async(_world)()
    await close_loop_clients()


async def scrape(accept: str = "") -> str:
    headers = {"accept": accept} if accept else {}
    response = await metrics_view.metrics(AsyncRequestFactory().get("/metrics", headers=headers))
    assert response.status_code == 200
    return str(response.content.decode())


def parse(body: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for metric in text_string_to_metric_families(body)
        for sample in metric.samples
    }


def sample(values: Samples, name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def with_label(values: Samples, label: str, value: str) -> list[str]:
    return sorted({name for name, labels in values if (label, value) in labels})


@pytest.mark.django_db(transaction=True)
async def test_the_metrics_view_answers_the_text_exposition_with_every_metric_name(
    world: World,
) -> None:
    MetricsEvents().execution_finished(result(world.support))

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
        "agent_budget_limit_dollars",
        "agent_budget_forecast_dollars",
        "agent_budget_forecast_ratio",
        "agent_slo_objective_ratio",
        "agent_slo_latency_threshold_seconds",
        "agent_cache_hits_total",
        "agent_fallbacks_total",
        "agent_retries_total",
        "breakwater_drain_lag_seconds",
        "breakwater_processes",
        "breakwater_metrics_source_up",
        "django_migrations_applied_total",
        "django_migrations_unapplied_total",
    ):
        base = name.removesuffix("_bucket").removesuffix("_total")
        assert f"# TYPE {base} " in body or f"# TYPE {name} " in body, name
    assert f'agent_requests_total{{agent="{world.support}",status="succeeded"}} 1.0' in body


@pytest.mark.django_db(transaction=True)
async def test_every_agent_deployment_and_budget_has_its_gauges_before_any_traffic(
    world: World,
) -> None:
    values = parse(await scrape())

    for agent in (world.support, world.billing):
        assert sample(values, "agent_circuit_breaker_state", agent=agent) == 0
    for ident in world.deployments:
        assert sample(values, "agent_deployment_breaker_state", deployment=str(ident)) == 0
    assert set(world.budgets) == {"global", "global:monthly", f"agent:{world.support}"}
    limits = {"global": 1000, "global:monthly": 20000, f"agent:{world.support}": 50}
    for scope, limit in limits.items():
        assert sample(values, "agent_budget_limit_dollars", scope=scope) == limit
        assert sample(values, "agent_budget_remaining_dollars", scope=scope) == limit
        assert sample(values, "agent_budget_forecast_dollars", scope=scope) == 0
        assert sample(values, "agent_budget_forecast_ratio", scope=scope) == 0
    for source in ("database", "shared_state", "journal"):
        assert sample(values, "breakwater_metrics_source_up", source=source) == 1


@pytest.mark.django_db(transaction=True)
async def test_a_known_agents_counters_read_zero_before_its_first_execution(world: World) -> None:
    values = parse(await scrape())

    for status in ("succeeded", "degraded", "failed"):
        assert sample(values, "agent_requests_total", agent=world.billing, status=status) == 0
    for kind in ("input", "output"):
        assert sample(values, "agent_llm_tokens_total", agent=world.billing, type=kind) == 0
    for reason in ("circuit_open", "budget_exceeded", "timeout", "llm_error"):
        assert sample(values, "agent_fallbacks_total", agent=world.billing, reason=reason) == 0
    for name in ("agent_cost_dollars_total", "agent_cache_hits_total", "agent_retries_total"):
        assert sample(values, name, agent=world.billing) == 0
    assert sample(values, "agent_active_requests", agent=world.billing) == 0
    bucket = "agent_request_duration_seconds_bucket"
    for le in ("0.5", "1.0", "2.0", "+Inf"):
        assert sample(values, bucket, agent=world.billing, le=le) == 0
    assert sample(values, "agent_request_duration_seconds_count", agent=world.billing) == 0


@pytest.mark.django_db(transaction=True)
async def test_every_agents_slo_objectives_are_read_at_scrape_time_from_its_config(
    world: World,
) -> None:
    values = parse(await scrape())

    objective, threshold = "agent_slo_objective_ratio", "agent_slo_latency_threshold_seconds"
    assert sample(values, objective, agent=world.support, sli="availability") == 0.995
    assert sample(values, objective, agent=world.support, sli="latency") == 0.95
    assert sample(values, threshold, agent=world.support) == 1.5
    assert sample(values, objective, agent=world.billing, sli="availability") == 0.999  # defaults
    assert sample(values, threshold, agent=world.billing) == 2.0

    patch = {"slo": {"availability": 0.99, "latency_ms": 800, "latency_quantile": 0.9}}
    await sync_to_async(agent_update)(name=world.billing, patch=patch, actor="test")
    values = parse(await scrape())

    assert sample(values, objective, agent=world.billing, sli="availability") == 0.99
    assert sample(values, objective, agent=world.billing, sli="latency") == 0.9
    assert sample(values, threshold, agent=world.billing) == 0.8

    await sync_to_async(agent_delete)(name=world.billing, actor="test")
    values = parse(await scrape())

    assert sample(values, threshold, agent=world.billing) is None
    assert sample(values, objective, agent=world.billing, sli="availability") is None
    assert sample(values, threshold, agent=world.support) == 1.5


@pytest.mark.django_db(transaction=True)
async def test_breakers_read_from_the_shared_state_whoever_moved_them(world: World) -> None:
    store = await state_for_jobs()
    await store.breaker_command(agent_breaker_key(world.support), "force_open")
    await store.breaker_command(deployment_breaker_key(world.deployments[1]), "force_open")

    values = parse(await scrape())
    assert sample(values, "agent_circuit_breaker_state", agent=world.support) == 2
    assert sample(values, "agent_circuit_breaker_state", agent=world.billing) == 0
    assert (
        sample(values, "agent_deployment_breaker_state", deployment=str(world.deployments[0])) == 0
    )
    assert (
        sample(values, "agent_deployment_breaker_state", deployment=str(world.deployments[1])) == 2
    )

    await store.breaker_command(agent_breaker_key(world.support), "reset")
    await store.breaker_command(deployment_breaker_key(world.deployments[1]), "reset")
    values = parse(await scrape())
    assert sample(values, "agent_circuit_breaker_state", agent=world.support) == 0
    assert (
        sample(values, "agent_deployment_breaker_state", deployment=str(world.deployments[1])) == 0
    )


@pytest.mark.django_db(transaction=True)
async def test_spend_settled_in_the_shared_state_lowers_the_budget_remaining(world: World) -> None:
    scope = f"agent:{world.support}"
    (span,) = [
        s
        for s in budget_spans(await sync_to_async(budget_list)(), now=timezone.now())
        if s.budget.pk == world.budgets[scope]
    ]
    store = await state_for_jobs()
    entry_id = str(uuid.uuid4())
    await store.budget_prepare((WindowInit(span.key, 0, 86_400.0),))
    assert (
        await store.budget_reserve(
            (BudgetHold(span.key, 10**9, 20_000_000, 86_400.0),), entry_id, 60.0
        )
    )[0]

    values = parse(await scrape())
    assert sample(values, "agent_budget_remaining_dollars", scope=scope) == 30  # reserved counts

    await store.complete(
        Completion(
            attempt=None,
            deployment_breaker=BreakerConfig(),
            entry_id=entry_id,
            budget_settlements=((span.key, 12_500_000),),
        )
    )
    values = parse(await scrape())
    assert sample(values, "agent_budget_remaining_dollars", scope=scope) == 37.5
    assert sample(values, "agent_budget_limit_dollars", scope=scope) == 50
    assert sample(values, "agent_budget_forecast_dollars", scope=scope) >= 12.5  # type: ignore[operator]


@pytest.mark.django_db(transaction=True)
async def test_a_deleted_agents_series_are_gone_at_the_next_scrape(world: World) -> None:
    MetricsEvents().execution_finished(result(world.support, cost="0.5"))
    before = parse(await scrape())
    assert sample(before, "agent_cost_dollars_total", agent=world.support) == 0.5
    assert sample(before, "agent_budget_remaining_dollars", scope=f"agent:{world.support}") == 50

    await sync_to_async(agent_delete)(name=world.support, actor="test")

    after = parse(await scrape())
    assert with_label(after, "agent", world.support) == []
    assert with_label(after, "scope", f"agent:{world.support}") == []
    assert sample(after, "agent_circuit_breaker_state", agent=world.billing) == 0
    assert sample(after, "agent_requests_total", agent=world.billing, status="failed") == 0


@pytest.mark.django_db(transaction=True)
async def test_a_deleted_deployments_breaker_series_is_gone_at_the_next_scrape(
    world: World,
) -> None:
    gone = str(world.deployments[1])
    assert sample(parse(await scrape()), "agent_deployment_breaker_state", deployment=gone) == 0

    await sync_to_async(ModelDeployment.objects.filter(pk=world.deployments[1]).delete)()

    values = parse(await scrape())
    assert with_label(values, "deployment", gone) == []
    assert (
        sample(values, "agent_deployment_breaker_state", deployment=str(world.deployments[0])) == 0
    )


@pytest.mark.django_db(transaction=True)
async def test_processes_count_live_heartbeats_by_role_and_a_role_down_reads_zero(
    world: World,
) -> None:
    now = timezone.now()
    stale = now - timedelta(seconds=settings.BREAKWATER_DEAD_AFTER_S + 5)

    def rows() -> None:
        for kind, beat_at, dead in [
            ("serve", now, False),
            ("serve", now, False),
            ("worker", stale, False),  # stopped beating
            ("worker", now, True),  # marked dead
            ("drainer", now, False),
        ]:
            WorkerProcess.objects.create(
                id=str(uuid.uuid4()), kind=kind, host="h", pid=1, beat_at=beat_at,
                dead_at=now if dead else None,
            )  # fmt: skip

    await sync_to_async(rows)()
    values = parse(await scrape())

    assert sample(values, "breakwater_processes", role="serve") == 2
    assert sample(values, "breakwater_processes", role="worker") == 0
    assert sample(values, "breakwater_processes", role="drainer") == 1


@pytest.mark.django_db(transaction=True)
async def test_the_migration_gauges_say_everything_is_applied(world: World) -> None:
    values = parse(await scrape())

    assert sample(values, "django_migrations_unapplied_total", connection="default") == 0
    assert (sample(values, "django_migrations_applied_total", connection="default") or 0) > 20


@pytest.mark.django_db(transaction=True)
async def test_the_metrics_view_speaks_openmetrics_when_asked(world: World) -> None:
    request = AsyncRequestFactory().get(
        "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
    )
    response = await metrics_view.metrics(request)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/openmetrics-text")
    body = response.content.decode()
    assert body.rstrip().endswith("# EOF")
    assert f'agent_circuit_breaker_state{{agent="{world.support}"}} 0.0' in body


async def test_the_metrics_view_refuses_post() -> None:
    response = await metrics_view.metrics(AsyncRequestFactory().post("/metrics"))
    assert response.status_code == 405


async def test_without_a_database_the_scrape_still_answers_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No django_db mark: every query fails, as with a database that is down.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    MetricsEvents().execution_finished(result("metrics-no-database"))

    values = parse(await scrape())

    assert sample(values, "breakwater_metrics_source_up", source="database") == 0
    assert not with_label(values, "scope", "global")
    # Unknown catalog: the counted series are kept as they are, not filtered.
    assert sample(
        values, "agent_requests_total", agent="metrics-no-database", status="succeeded"
    ) == 1  # fmt: skip
    await close_loop_clients()


# --- drain lag -------------------------------------------------------------------------------


def request(execution_id: str) -> ExecutionRequest:
    return ExecutionRequest(
        execution_id=execution_id, agent="lagging", messages=(Message("user", "hi"),)
    )


@pytest.mark.django_db(transaction=True)
async def test_the_file_journals_oldest_undrained_record_dates_the_lag(tmp_path: Path) -> None:
    journal = FileJournal(tmp_path)
    written_at = time.time() - 30
    await journal.started(request(str(uuid.uuid4())), written_at)
    later = ExecutionRequest(
        execution_id=str(uuid.uuid4()), agent="lagging", messages=(Message("user", "hi"),)
    )
    await journal.started(later, written_at + 10)

    assert journal_oldest_at(tmp_path) == pytest.approx(written_at)

    await sync_to_async(drain_files_once)(tmp_path)
    assert journal_oldest_at(tmp_path) is None
    journal.close()


async def test_the_redis_streams_oldest_entry_dates_the_lag(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    stream = f"test:journal:{uuid.uuid4().hex}"
    try:
        assert await stream_lag_s(client, stream) == 0
        (seconds, micros) = await client.time()
        accepted_ms = seconds * 1000 + micros // 1000 - 30_000
        await client.xadd(stream, {"e": b"{}"}, id=f"{accepted_ms}-0")
        await client.xadd(stream, {"e": b"{}"}, id=f"{accepted_ms + 20_000}-0")

        assert await stream_lag_s(client, stream) == pytest.approx(30, abs=2)

        await client.xdel(stream, f"{accepted_ms}-0")
        assert await stream_lag_s(client, stream) == pytest.approx(10, abs=2)
    finally:
        await client.delete(stream)
        await client.aclose()


# --- multiprocess mode -----------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    from decimal import Decimal

    from agents.metrics import MetricsEvents
    from agents.runtime.types import ExecutionResult, ExecutionStatus, Usage

    count = int(sys.argv[1])
    events = MetricsEvents()
    events.execution_started("still-running", "mp-agent")  # never finishes: the process dies
    for index in range(count):
        events.execution_finished(ExecutionResult(
            execution_id=f"ex-{index}", agent="mp-agent", status=ExecutionStatus.SUCCEEDED,
            output="", model="m", deployment=1, attempts=1, fallback_used=False,
            fallback_reason=None, cached=False, usage=Usage(10, 5), cost_usd=Decimal("0.001"),
            latency_ms=200.0, created_at=0.0, finished_at=0.2,
        ))
    """
)


def run_workers(directory: Path, count: int, processes: int = 3) -> list[int]:
    """Run ``processes`` worker processes at once; return their (dead) pids."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env.pop("DJANGO_SETTINGS_MODULE", None)  # the metrics need no Django
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(count)],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
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
    run_workers(multiproc_dir, 40)

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
    pids = run_workers(multiproc_dir, 5)
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


def test_prepare_wipes_files_left_by_a_previous_run(multiproc_dir: Path) -> None:
    run_workers(multiproc_dir, 3, processes=1)
    assert list(multiproc_dir.glob("*.db"))

    prepare_multiprocess_dir(multiproc_dir)

    assert list(multiproc_dir.glob("*.db")) == []


@pytest.mark.django_db(transaction=True)
async def test_the_metrics_view_merges_every_process_in_multiprocess_mode(
    multiproc_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("mp-agent", "mp-quiet"):
        await sync_to_async(Agent.objects.create)(name=name, model="m")
    run_workers(multiproc_dir, 7)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(multiproc_dir))

    response = await metrics_view.metrics(AsyncRequestFactory().get("/metrics"))
    await close_loop_clients()

    assert response.status_code == 200
    body = response.content.decode()
    assert 'agent_requests_total{agent="mp-agent",status="succeeded"} 21.0' in body
    # The dead workers' in-flight executions were cleaned up before the scrape.
    assert 'agent_active_requests{agent="mp-agent"} 0.0' in body
    # A known agent no process has counted yet reads zero, from the merged files too.
    assert 'agent_requests_total{agent="mp-quiet",status="succeeded"} 0.0' in body
    assert 'agent_circuit_breaker_state{agent="mp-quiet"} 0.0' in body
    # Only the merged files are exported, not this process's own registry.
    assert "metrics-view" not in body
    assert body.count("# TYPE agent_requests_total counter") == 1
