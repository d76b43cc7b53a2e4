from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.executions import queue as executions
from agents.models import Agent, Execution, ExecutionStatus


@pytest.mark.django_db
def test_executions_left_queued_are_dispatched_again_on_their_agents_queue(
    monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.BREAKWATER_EXECUTION_QUEUE = "celery"
    Agent.objects.create(name="a", model="m", timeout_s=12)
    Agent.objects.create(name="b", model="m", timeout_s=20, queue="heavy")
    pooled = Execution.objects.create(
        agent_name="b",
        status=ExecutionStatus.QUEUED,
        created_at=timezone.now() - timedelta(minutes=11),
    )
    old = Execution.objects.create(
        agent_name="a",
        status=ExecutionStatus.QUEUED,
        created_at=timezone.now() - timedelta(minutes=10),
    )
    Execution.objects.create(agent_name="a", status=ExecutionStatus.QUEUED)  # just queued
    Execution.objects.create(
        agent_name="a",
        status=ExecutionStatus.SUCCEEDED,
        created_at=timezone.now() - timedelta(minutes=10),
    )
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(executions, "execution_dispatch", lambda **kw: sent.append(kw))
    assert executions.executions_requeue_stale() == 2
    assert sent == [
        {"execution_id": str(pooled.pk), "timeout_s": 20.0, "queue": "heavy"},
        {"execution_id": str(old.pk), "timeout_s": 12.0, "queue": "celery"},  # `default`
    ]
