"""Incidents and their timelines; notification channels and their delivery log."""

from __future__ import annotations

import uuid

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
    "slo_burn": "SLO burn (fast or slow)",
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
    # What the notification channels were last told about it: "" (nothing yet), "open" (opened
    # or escalated), "resolved". A flapping key reopens a resolved incident silently; it is
    # announced again only if it stays open past the flap cool-down (incidents.notifications).
    notified = models.CharField(max_length=16, blank=True, default="")

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


# --- notifications ---------------------------------------------------------------------------


SEVERITY_RANK = {Severity.MINOR: 0, Severity.MAJOR: 1, Severity.CRITICAL: 2}


class ChannelKind(models.TextChoices):
    WEBHOOK = "webhook"
    SLACK = "slack"
    EMAIL = "email"


class NotificationChannel(models.Model):
    """Where incident notifications go (config as code: ``notifications:``). Secrets are never
    stored: a webhook's signing secret, and a URL that embeds a token (Slack's), are read from
    the environment variables named here when a message is sent."""

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=ChannelKind.choices)
    url = models.CharField(max_length=500, blank=True, default="")
    url_env = models.CharField(max_length=128, blank=True, default="")
    secret_env = models.CharField(max_length=128, blank=True, default="")
    to = models.JSONField(default=list, blank=True)  # email addresses
    min_severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.MINOR)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=ChannelKind.values), name="notification_channel_kind_valid"
            ),
            models.CheckConstraint(
                condition=Q(min_severity__in=Severity.values),
                name="notification_channel_severity_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    def routes(self, severity: str) -> bool:
        """Whether an incident of ``severity`` is sent here."""
        return SEVERITY_RANK[Severity(severity)] >= SEVERITY_RANK[Severity(self.min_severity)]


class DeliveryEvent(models.TextChoices):
    OPENED = "opened"
    ESCALATED = "escalated"
    RESOLVED = "resolved"
    TEST = "test"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"


class NotificationDelivery(models.Model):
    """One message to one channel: the idempotency key of its sending. Its id travels with the
    message (``X-Breakwater-Delivery``) so a receiver can drop a repeat; an attempt claims the row
    with a conditional UPDATE first, and a row recorded ``sent`` is never sent again. At most one
    row per channel and timeline entry (``trigger``): an event is announced once per channel."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    channel = models.ForeignKey(
        NotificationChannel, on_delete=models.SET_NULL, null=True, related_name="deliveries"
    )
    channel_name = models.CharField(max_length=64)  # kept when the channel is deleted
    incident = models.ForeignKey(
        Incident, on_delete=models.PROTECT, null=True, blank=True, related_name="deliveries"
    )
    trigger = models.ForeignKey(
        IncidentEvent, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    event = models.CharField(max_length=16, choices=DeliveryEvent.choices)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    payload = models.JSONField(default=dict)  # what is sent, fixed when the event happened
    attempts = models.PositiveSmallIntegerField(default=0)
    max_attempts = models.PositiveSmallIntegerField(default=5)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    claimed_until = models.DateTimeField(null=True, blank=True)  # an attempt in flight
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)
    actor = models.CharField(max_length=150, default="system")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["created_at", "id"], name="notification_delivery_time"),
            models.Index(fields=["channel", "created_at", "id"], name="notification_channel_time"),
            models.Index(fields=["status", "next_attempt_at"], name="notification_due"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["channel_name", "trigger"],
                condition=Q(trigger__isnull=False),
                name="notification_once_per_channel_event",
            ),
            models.CheckConstraint(
                condition=Q(status__in=DeliveryStatus.values),
                name="notification_delivery_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(event__in=DeliveryEvent.values),
                name="notification_delivery_event_valid",
            ),
            models.CheckConstraint(
                condition=~Q(status=DeliveryStatus.SENT) | Q(sent_at__isnull=False),
                name="notification_sent_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} -> {self.channel_name} ({self.status})"


class NotificationAttempt(AppendOnlyModel):
    """One try at sending a delivery: what came back, or what went wrong."""

    delivery = models.ForeignKey(
        NotificationDelivery, on_delete=models.PROTECT, related_name="attempt_log"
    )
    number = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0)
    ok = models.BooleanField()
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)  # HTTP / SMTP code
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="notification_attempt_once")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}: {'ok' if self.ok else self.error[:60]}"
