"""The console app's models. The audit trail and the configuration version are defined in
:mod:`core.models` (every app writes them); importing them here registers them under the
``console`` label, where their migrations live. :class:`DrillRun` is the console's own: one run
of ``manage.py drill`` or of the ``/drills/`` page (console/drills/)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from core.models import AppendOnlyError, AppendOnlyModel, AuditEvent, ConfigVersion

__all__ = [
    "AppendOnlyError",
    "AppendOnlyModel",
    "AuditEvent",
    "ConfigVersion",
    "DrillKind",
    "DrillRun",
    "DrillStatus",
]


class DrillKind(models.TextChoices):
    OUTAGE = "outage", "API outage"
    COST_SPIKE = "cost-spike", "Cost spike"
    MEMORY_LEAK = "memory-leak", "Memory leak"


class DrillStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    PASSED = "passed"  # every safeguard did what the drill checks
    FAILED = "failed"  # the drill ran, and a safeguard did not hold (see its checks)
    ERROR = "error"  # the drill could not run (server unreachable, bad key, ...)
    UNSUPPORTED = "unsupported"  # the deployment lacks what the drill needs


class DrillRun(models.Model):
    """One replay of a reference-deployment incident against a running deployment: what was
    asked (``options``), what happened (``figures``: the printed table's numbers, and the
    ``checks`` that decide ``status``) and the run's ``log``."""

    kind = models.CharField(max_length=16, choices=DrillKind.choices)
    status = models.CharField(
        max_length=16, choices=DrillStatus.choices, default=DrillStatus.QUEUED
    )
    actor = models.CharField(max_length=200, blank=True, default="")
    options = models.JSONField(default=dict, blank=True)
    figures = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True, default="")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "console"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["-created_at", "-id"], name="drillrun_newest")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(kind__in=DrillKind.values), name="drillrun_kind_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=DrillStatus.values), name="drillrun_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"drill {self.pk} {self.kind} {self.status}"

    @property
    def done(self) -> bool:
        return self.status not in (DrillStatus.QUEUED, DrillStatus.RUNNING)

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()
