"""Incidents and their timelines."""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone

from core.models import AppendOnlyModel


class IncidentStatus(models.TextChoices):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Severity(models.TextChoices):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"


# Every incident class and how the console names it (docs/OPERATIONS.md "Incidents"). ``kind``
# stays free text (no choices): a new class needs no migration.
INCIDENT_KINDS: dict[str, str] = {
    "breaker_open": "Breaker open",
    "dependency_down": "Shared state down",
    "budget_exhausted": "Budget exhausted",
    "budget_forecast": "Budget forecast over its limit",
    "cost_spike": "Cost spike",
    "ledger_drift": "Ledger drift",
    "slo_burn": "SLO fast burn",
    "upstream_quota": "Upstream quota exhausted",
    "config_reload": "Config reload failed",
    "provider_secret": "Provider secret unreadable",
    "memory_growth": "Memory growth",
    "alert": "Alertmanager alert",
    "error_rate": "Error rate",
    "manual": "Declared",
}


def kind_label(kind: str) -> str:
    return INCIDENT_KINDS.get(kind, kind.replace("_", " ").capitalize())


class Incident(models.Model):
    """Something broke. ``dedup_key`` (e.g. ``breaker:customer-support``) keeps one open per cause."""

    kind = models.CharField(max_length=64)  # INCIDENT_KINDS
    dedup_key = models.CharField(max_length=200)
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.MAJOR)
    status = models.CharField(
        max_length=16, choices=IncidentStatus.choices, default=IncidentStatus.OPEN
    )
    title = models.CharField(max_length=300)
    agent_name = models.CharField(max_length=64, blank=True, default="")
    opened_at = models.DateTimeField(default=timezone.now, db_index=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    # Postmortem fields.
    impact = models.TextField(blank=True, default="")
    root_cause = models.TextField(blank=True, default="")
    resolution = models.TextField(blank=True, default="")
    lessons = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-opened_at", "-id"]
        indexes = [models.Index(fields=["status", "-opened_at"], name="incident_status_time")]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=IncidentStatus.values), name="incident_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(severity__in=Severity.values), name="incident_severity_valid"
            ),
            models.CheckConstraint(
                condition=~Q(status=IncidentStatus.RESOLVED) | Q(resolved_at__isnull=False),
                name="incident_resolved_has_time",
            ),
            models.UniqueConstraint(
                fields=["dedup_key"],
                condition=~Q(status=IncidentStatus.RESOLVED),
                name="incident_one_open_per_key",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.title}"


class IncidentEvent(AppendOnlyModel):
    """A timeline entry: opened, breaker transition, acknowledged, comment, resolved."""

    incident = models.ForeignKey(Incident, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=64)
    message = models.TextField()
    actor = models.CharField(max_length=150, default="system")
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["at", "id"]
        indexes = [models.Index(fields=["incident", "at"], name="incident_event_time")]

    def __str__(self) -> str:
        return f"{self.at:%H:%M:%S} {self.kind}"
