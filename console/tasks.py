"""Celery tasks of the console. Thin: take ids, call one service, explicit limits."""

from __future__ import annotations

from celery import shared_task

from console.drills.runner import drill_execute

# The longest drill (an outage with the longest recovery wait) is a few minutes.
DRILL_TIME_LIMIT_S = 30 * 60


@shared_task(
    name="console.tasks.drill_run",
    acks_late=False,  # a drill is not re-run after a lost worker: it would start a second fault
    ignore_result=True,  # the DrillRun row is the result
    soft_time_limit=DRILL_TIME_LIMIT_S,
    time_limit=DRILL_TIME_LIMIT_S + 60,
)
def drill_run(drill_id: int) -> str:
    """Run queued drill ``drill_id`` (with a temporary key of its own)."""
    return str(drill_execute(drill_id=drill_id).status)
