"""Upstream quota incidents from the steps of finished executions."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from agents.models import ModelDeployment, Provider
from agents.runtime.types import ExecutionResult, ExecutionStatus, Step, Usage
from incidents.events import IncidentEvents
from incidents.models import Incident, IncidentEvent, IncidentStatus, Severity
from incidents.quota import QuotaWatch, quota_incidents_sweep, quota_key

pytestmark = pytest.mark.django_db

QUOTA = "You exceeded your current quota, please check your plan and billing details."


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _run_now(fn: Any, *args: Any) -> None:
    fn(*args)


def _result(*steps: Step, agent: str = "support", fallback: bool = True) -> ExecutionResult:
    failed = any(step.outcome != "ok" for step in steps)
    return ExecutionResult(
        execution_id="ex",
        agent=agent,
        status=ExecutionStatus.SUCCEEDED if not failed or fallback else ExecutionStatus.DEGRADED,
        output="",
        model="m",
        deployment=None,
        attempts=len(steps),
        fallback_used=failed and fallback,
        fallback_reason="llm_error" if failed and fallback else None,
        cached=False,
        usage=Usage(),
        cost_usd=Decimal(0),
        latency_ms=10.0,
        created_at=0.0,
        finished_at=0.0,
        steps=steps,
    )


def _quota(deployment: int = 7) -> Step:
    return Step(
        "attempt",
        model="gpt-4o-mini",
        deployment=deployment,
        outcome="QuotaExhausted",
        detail=QUOTA,
    )


def _ok(deployment: int = 7) -> Step:
    return Step("attempt", model="gpt-4o-mini", deployment=deployment, outcome="ok")


def _backup() -> tuple[Step, Step]:
    return Step("fallback", model="backup", outcome="llm_error"), _ok(8)


def test_a_quota_error_opens_one_incident_for_its_deployment_with_the_providers_words() -> None:
    provider = Provider.objects.create(name="openai-main", kind="openai", base_url="http://x")
    row = ModelDeployment.objects.create(
        name="gpt-4o-mini", provider=provider, upstream_model="gpt-4o-mini-2024"
    )
    watch = QuotaWatch(_run_now, clock=Clock())

    watch.observe(_result(_quota(row.pk), *_backup()))

    incident = Incident.objects.get(dedup_key=quota_key(row.pk))
    assert incident.kind == "upstream_quota"
    assert incident.severity == Severity.MAJOR
    assert incident.agent_name == ""  # a deployment concerns every agent on it
    assert incident.title == (
        f"Upstream quota exhausted: deployment {row.pk} (gpt-4o-mini on openai-main, "
        "gpt-4o-mini-2024)"
    )
    opened = incident.events.get()
    assert opened.message == f"1 insufficient-quota answer (agents: support): {QUOTA}"
    assert opened.data["errors"] == 1


def test_a_storm_of_quota_errors_is_one_timeline_entry_a_minute_with_the_count() -> None:
    clock = Clock()
    watch = QuotaWatch(_run_now, clock=clock)
    watch.observe(_result(_quota(), *_backup()))
    for agent in ("support", "billing") * 20:  # 40 more over the next 50 s: folded
        clock.now += 1.25
        watch.observe(_result(_quota(), *_backup(), agent=agent))
    assert IncidentEvent.objects.count() == 1

    clock.now += 10.0  # a minute after the first report
    watch.observe(_result(_quota(), *_backup()))

    incident = Incident.objects.get()
    assert [e.kind for e in incident.events.all()] == ["opened", "recurred"]
    recurred = incident.events.last()
    assert recurred is not None
    assert recurred.data["errors"] == 41
    assert recurred.data["agents"] == ["billing", "support"]
    assert recurred.message.startswith("41 insufficient-quota answers in 60s (agents: ")


def test_an_answer_from_the_deployment_resolves_it_once_a_minute_passed_without_quota_errors(
    settings: Any,
) -> None:
    settings.BREAKWATER_NOTIFY_FLAP_S = 0  # past the flap cool-down: running out again is new
    clock = Clock()
    watch = QuotaWatch(_run_now, clock=clock)
    watch.observe(_result(_quota(), *_backup()))

    clock.now += 30  # an answer squeezed between quota errors does not resolve it
    watch.observe(_result(_ok()))
    assert Incident.objects.get().status == IncidentStatus.OPEN

    clock.now += 45
    watch.observe(_result(_ok()))
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    resolved = incident.events.last()
    assert resolved is not None
    assert resolved.message == (
        "deployment 7 answered successfully again, 75s after its last insufficient-quota answer"
    )

    watch.observe(_result(_quota(), *_backup()))  # it runs out again: a new incident
    assert Incident.objects.filter(status=IncidentStatus.OPEN).count() == 1
    assert Incident.objects.count() == 2


def test_other_failures_and_other_deployments_answers_leave_it_alone() -> None:
    clock = Clock()
    watch = QuotaWatch(_run_now, clock=clock)
    watch.observe(
        _result(Step("attempt", model="m", deployment=7, outcome="RateLimited"), *_backup())
    )
    assert not Incident.objects.exists()
    watch.observe(_result(_quota(), *_backup()))
    clock.now += 120
    watch.observe(_result(_ok(8)))
    assert Incident.objects.get().status == IncidentStatus.OPEN


def test_the_sweep_resolves_a_quota_incident_nothing_reported_to_for_ten_minutes() -> None:
    watch = QuotaWatch(_run_now, clock=Clock())
    watch.observe(_result(_quota(), *_backup()))
    incident = Incident.objects.get()
    opened_at = incident.events.get().at

    assert quota_incidents_sweep(now=opened_at + timedelta(minutes=9)) == []
    # A comment is not a quota error: it does not keep the incident open.
    IncidentEvent(
        incident=incident, kind="comment", message="looking", at=opened_at + timedelta(minutes=9)
    ).save()
    assert quota_incidents_sweep(now=opened_at + timedelta(minutes=11)) == [incident.pk]

    incident.refresh_from_db()
    assert incident.status == IncidentStatus.RESOLVED
    assert incident.events.get(kind="resolved").message == (
        "no insufficient-quota answer reported for 10 min"
    )
    assert quota_incidents_sweep(now=timezone.now() + timedelta(hours=1)) == []


@pytest.mark.django_db(transaction=True)
def test_the_sink_reads_the_steps_and_writes_off_the_calling_thread() -> None:
    clock = Clock()
    sink = IncidentEvents(clock=clock)
    sink.execution_finished(_result(_quota(), *_backup()))
    clock.now += 90
    sink.execution_finished(_result(_ok()))
    sink.close(wait=True)
    incident = Incident.objects.get()
    assert incident.status == IncidentStatus.RESOLVED
    assert [e.kind for e in incident.events.all()] == ["opened", "resolved"]
