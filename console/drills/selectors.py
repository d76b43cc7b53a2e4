"""Drill runs (reads)."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from console.models import DrillRun, DrillStatus

ACTIVE = (DrillStatus.QUEUED, DrillStatus.RUNNING)


def drill_rows(*, limit: int = 50) -> list[DrillRun]:
    """The newest runs, newest first (one query)."""
    return list(DrillRun.objects.order_by("-created_at", "-id")[:limit])


def drill_get(*, drill_id: int) -> DrillRun | None:
    return DrillRun.objects.filter(pk=drill_id).first()


def drill_active(*, stale_after_s: float) -> DrillRun | None:
    """A drill still queued or running, if any. One created more than ``stale_after_s`` ago
    (past the task's time limit) is not: its process died without finishing it."""
    since = timezone.now() - timedelta(seconds=stale_after_s)
    return (
        DrillRun.objects.filter(status__in=ACTIVE, created_at__gte=since)
        .order_by("-created_at")
        .first()
    )
