"""Celery tasks for incidents (periodic jobs, see console/schedule.py). Thin: call one service."""

from __future__ import annotations

from celery import shared_task

from incidents.quota import quota_incidents_sweep


@shared_task(name="incidents.tasks.quota_incidents_sweep", acks_late=True, time_limit=60)
def quota_incidents_sweep_task() -> int:
    """Upstream quota incidents resolved after a quiet period without a quota error."""
    return len(quota_incidents_sweep())
