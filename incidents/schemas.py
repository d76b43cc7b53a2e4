"""API schemas for incidents."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import Field, field_validator, model_validator

from agents.schemas import StrictSchema

IncidentStatusName = Literal["open", "acknowledged", "resolved"]
SeverityName = Literal["critical", "major", "minor"]
POSTMORTEM_FIELDS = ("impact", "root_cause", "resolution", "lessons")
TEXT_MAX = 20_000


class IncidentEventOut(Schema):
    at: datetime
    kind: str
    message: str
    actor: str
    data: dict[str, Any]


class IncidentOut(Schema):
    id: int
    kind: str
    severity: SeverityName
    status: IncidentStatusName
    title: str
    agent: str | None
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str
    resolved_at: datetime | None
    impact: str
    root_cause: str
    resolution: str
    lessons: str
    timeline: list[IncidentEventOut]


class IncidentListOut(Schema):
    items: list[IncidentOut]
    next: str | None = Field(description="Opaque cursor for the next page (`after=`), or null.")


class IncidentIn(StrictSchema):
    """An incident an operator declares (detectors open the others)."""

    title: str = Field(min_length=1, max_length=300)
    severity: SeverityName = "major"
    agent: str | None = Field(default=None, max_length=64)
    message: str = Field(default="", max_length=TEXT_MAX, description="The first timeline entry.")


class IncidentPatchIn(StrictSchema):
    """Acknowledge, resolve, re-grade, comment, or write the postmortem; each change is a
    timeline entry and an audit record."""

    status: Literal["acknowledged", "resolved"] | None = None
    severity: SeverityName | None = None
    comment: str | None = Field(default=None, min_length=1, max_length=TEXT_MAX)
    impact: str | None = Field(default=None, max_length=TEXT_MAX)
    root_cause: str | None = Field(default=None, max_length=TEXT_MAX)
    resolution: str | None = Field(default=None, max_length=TEXT_MAX)
    lessons: str | None = Field(default=None, max_length=TEXT_MAX)

    @model_validator(mode="after")
    def _something(self) -> IncidentPatchIn:
        if not self.model_fields_set:
            raise ValueError("nothing to change")
        return self


class IncidentQuery(Schema):
    status: IncidentStatusName | None = None
    agent: str | None = Field(default=None, max_length=64)
    kind: str | None = Field(
        default=None,
        max_length=64,
        description="An incident class, e.g. `breaker_open`, `budget_exhausted`, `alert`.",
    )
    after: str | None = Field(default=None, max_length=200, description="A `next` cursor.")
    limit: int = Field(default=50, ge=1, le=200)


# --- notifications ---------------------------------------------------------------------------

DeliveryStatusName = Literal["pending", "retrying", "sent", "failed"]
DeliveryEventName = Literal["opened", "escalated", "resolved", "test"]


class NotificationAttemptOut(Schema):
    number: int
    started_at: datetime
    duration_ms: int
    ok: bool
    response_status: int | None = Field(description="The receiver's HTTP or SMTP code, if any.")
    error: str


class NotificationDeliveryOut(Schema):
    id: str = Field(description="The delivery id: sent as `X-Breakwater-Delivery`.")
    channel: str
    event: DeliveryEventName
    status: DeliveryStatusName
    incident: int | None
    attempts: int
    max_attempts: int
    last_error: str
    created_at: datetime
    sent_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When retrying: the next attempt.")
    attempt_log: list[NotificationAttemptOut]


class NotificationChannelOut(Schema):
    name: str
    kind: Literal["webhook", "slack", "email"]
    url: str | None
    url_env: str | None
    secret_env: str | None
    to: list[str]
    min_severity: SeverityName
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_delivery: NotificationDeliveryOut | None
    recent: list[NotificationDeliveryOut] = Field(description="The newest deliveries.")


class NotificationChannelListOut(Schema):
    items: list[NotificationChannelOut]
    next: str | None = Field(description="Always null: every channel is on one page.")


class NotificationDeliveryListOut(Schema):
    items: list[NotificationDeliveryOut]
    next: str | None = Field(description="Opaque cursor for the next page (`after=`), or null.")


class NotificationDeliveryQuery(Schema):
    channel: str | None = Field(default=None, max_length=64)
    after: str | None = Field(default=None, max_length=200, description="A `next` cursor.")
    limit: int = Field(default=50, ge=1, le=200)


# --- Alertmanager's webhook (version 4) -----------------------------------------------------

ALERTS_MAX = 1000  # per notification (webhook_config max_alerts keeps a big group under it)
LABELS_MAX = 64  # labels or annotations per alert
LABEL_NAME_MAX = 128
LABEL_VALUE_MAX = 2048
ANNOTATION_VALUE_MAX = 8192
AlertStatus = Literal["firing", "resolved"]


def _bounded(values: dict[str, str], *, value_max: int, what: str) -> dict[str, str]:
    if len(values) > LABELS_MAX:
        raise ValueError(f"at most {LABELS_MAX} {what}, got {len(values)}")
    for name, value in values.items():
        if not name or len(name) > LABEL_NAME_MAX:
            raise ValueError(f"{what} names must be 1 to {LABEL_NAME_MAX} characters: {name!r:.60}")
        if len(value) > value_max:
            raise ValueError(f"{what} {name!r:.60}: at most {value_max} characters")
    return values


class AlertmanagerAlertIn(Schema):
    """One alert of the notification. Fields Alertmanager may add later are ignored."""

    status: AlertStatus
    labels: dict[str, str] = Field(description="Must hold `alertname`.")
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime  # Alertmanager's names
    endsAt: datetime | None = None  # "0001-01-01T00:00:00Z" while firing
    generatorURL: str = Field(default="", max_length=2048)
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z]+$")

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        value = _bounded(value, value_max=LABEL_VALUE_MAX, what="labels")
        if not value.get("alertname"):
            raise ValueError("must hold a non-empty 'alertname'")
        return value

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        return _bounded(value, value_max=ANNOTATION_VALUE_MAX, what="annotations")


class AlertmanagerIn(Schema):
    """Alertmanager's webhook notification, version 4 (``webhook_configs`` in its
    configuration)."""

    version: Literal["4"]
    groupKey: str = Field(max_length=4096)
    truncatedAlerts: int = Field(default=0, ge=0)
    status: AlertStatus
    receiver: str = Field(max_length=256)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = Field(default="", max_length=2048)
    alerts: list[AlertmanagerAlertIn] = Field(min_length=1, max_length=ALERTS_MAX)


class AlertmanagerOut(Schema):
    """What the notification changed; Alertmanager only looks at the status (2xx)."""

    opened: list[int] = Field(description="Incidents opened.")
    updated: list[int] = Field(description="Open incidents whose alert changed (a timeline entry).")
    resolved: list[int] = Field(description="Incidents resolved.")
    attached: list[int] = Field(
        default_factory=list,
        description="Breakwater's own open incidents an alert joined (a timeline entry) instead "
        "of opening a second one: alerts whose `breakwater_incident` label names them.",
    )
    unchanged: int = Field(description="Alerts that changed nothing (Alertmanager's repeats).")
