"""Celery tasks for incidents (periodic jobs, see console/schedule.py). Thin: call the services."""

from __future__ import annotations

from celery import shared_task

from incidents.events import dependency_incidents_sweep
from incidents.quota import quota_incidents_sweep


@shared_task(name="incidents.tasks.incidents_sweep", acks_late=True, time_limit=60)
def incidents_sweep() -> int:
    """Incidents resolved because nothing can report their recovery any more: upstream quota
    after a quiet period, dependency outages whose reporting processes are all gone."""
    return len(quota_incidents_sweep()) + len(dependency_incidents_sweep())
