from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from agents.executions import queue as executions
from agents.models import Agent, Execution, ExecutionStatus


@pytest.mark.django_db
def test_executions_left_queued_are_dispatched_again(monkeypatch: pytest.MonkeyPatch) -> None:
    Agent.objects.create(name="a", model="m", timeout_s=12)
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
    assert executions.executions_requeue_stale() == 1
    assert sent == [{"execution_id": str(old.pk), "timeout_s": 12.0}]
