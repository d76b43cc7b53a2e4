"""Drill runs (reads)."""

from __future__ import annotations

from console.models import DrillRun, DrillStatus

ACTIVE = (DrillStatus.QUEUED, DrillStatus.RUNNING)


def drill_rows(*, limit: int = 50) -> list[DrillRun]:
    """The newest runs, newest first (one query)."""
    return list(DrillRun.objects.order_by("-created_at", "-id")[:limit])


def drill_get(*, drill_id: int) -> DrillRun | None:
    return DrillRun.objects.filter(pk=drill_id).first()


def drill_active() -> DrillRun | None:
    """A drill still queued or running, if any."""
    return DrillRun.objects.filter(status__in=ACTIVE).order_by("-created_at").first()
