"""Celery tasks for agents. Thin: take ids, call one service, explicit limits."""

from __future__ import annotations

from celery import shared_task

from agents.services import executions_reap_stale as _reap


@shared_task(name="agents.tasks.executions_reap_stale", acks_late=True, time_limit=120)
def executions_reap_stale() -> int:
    return _reap()
