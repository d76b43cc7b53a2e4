"""Celery tasks for incidents (deliveries, and periodic jobs: console/schedule.py). Thin: call the
services."""

from __future__ import annotations

from celery import shared_task

from incidents import notifications
from incidents.events import dependency_incidents_sweep
from incidents.quota import quota_incidents_sweep


@shared_task(
    name="incidents.tasks.notification_deliver",
    acks_late=True,  # a worker that dies mid-send leaves the message to be delivered again
    ignore_result=True,  # the delivery row and its attempt log are the result
    time_limit=120,  # > BREAKWATER_NOTIFY_TIMEOUT_S and EMAIL_TIMEOUT (at most 120 s each)
)
def notification_deliver(delivery_id: str) -> str:
    """One attempt at one notification; the retries are scheduled by the service itself (the
    same way on a Celery worker and on the in-process one), never by Celery's retry."""
    return notifications.delivery_attempt(delivery_id)


@shared_task(name="incidents.tasks.notifications_sweep", acks_late=True, time_limit=60)
def notifications_sweep() -> int:
    """Lost hand-offs handed over again; reopened incidents past the cool-down announced."""
    return notifications.notifications_sweep()


@shared_task(name="incidents.tasks.incidents_sweep", acks_late=True, time_limit=60)
def incidents_sweep() -> int:
    """Incidents resolved because nothing can report their recovery any more: upstream quota
    after a quiet period, dependency outages whose reporting processes are all gone."""
    return len(quota_incidents_sweep()) + len(dependency_incidents_sweep())
