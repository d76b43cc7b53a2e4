"""Celery tasks for incidents. Thin: take ids, call one service, explicit limits."""

from __future__ import annotations

from celery import shared_task

from incidents import notifications


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
