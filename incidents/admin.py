"""Incidents are read-only here (and so is the notification delivery log; channels are saved as
``apply`` saves them): acknowledging, resolving and the postmortem go through
``PATCH /api/v1/incidents/{id}`` (``incident_change``: a timeline entry per change, one audit
event); the system opens and resolves the rest."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import admin
from django.db import models
from django.http import HttpRequest

from agents.admin import ServiceAdmin, ServiceForm, _one_entry
from incidents.models import (
    Incident,
    IncidentEvent,
    NotificationAttempt,
    NotificationChannel,
    NotificationDelivery,
)


class IncidentEventInline(admin.TabularInline):
    model = IncidentEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "kind", "message", "actor", "data"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "kind", "severity", "status", "opened_at", "resolved_at"]
    list_filter = ["status", "severity", "kind"]
    inlines = [IncidentEventInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- notifications -----------------------------------------------------------------------------


class NotificationChannelForm(ServiceForm):
    """Saved as a one-entry ``apply`` of ``notifications:`` would save it (the same checks, one
    audit event); ``to`` is one address a line."""

    entry_prefix = re.compile(r"^notifications\[0\](?:\.|: )")
    to = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Email channels: one address a line.",
    )

    class Meta:
        model = NotificationChannel
        fields = ["name", "kind", "url", "url_env", "secret_env", "to", "min_severity", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk is not None:
            self.initial["to"] = "\n".join(self.instance.to)

    def clean_to(self) -> list[str]:
        return [
            line.strip()
            for line in str(self.cleaned_data.get("to") or "").splitlines()
            if line.strip()
        ]

    def write(self, *, actor: str) -> models.Model:
        channel = self.instance
        spec: dict[str, Any] = {
            "name": channel.name,
            "kind": channel.kind,
            "min_severity": channel.min_severity,
            "enabled": channel.enabled,
        }
        for name in ("url", "url_env", "secret_env"):
            if getattr(channel, name):
                spec[name] = getattr(channel, name)
        if channel.to:
            spec["to"] = list(channel.to)
        _one_entry("notifications", spec, actor=actor)
        return NotificationChannel.objects.get(name=channel.name)


@admin.register(NotificationChannel)
class NotificationChannelAdmin(ServiceAdmin):
    form = NotificationChannelForm
    list_display = ["name", "kind", "min_severity", "enabled", "updated_at"]
    list_filter = ["kind", "min_severity", "enabled"]
    search_fields = ["name"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return ["name"] if obj is not None else []  # apply finds a channel by its name

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # `apply --prune` deletes (and audits) what the file omits


class NotificationAttemptInline(admin.TabularInline):
    model = NotificationAttempt
    extra = 0
    can_delete = False
    readonly_fields = ["number", "started_at", "duration_ms", "ok", "response_status", "error"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(NotificationDelivery)
class NotificationDeliveryAdmin(admin.ModelAdmin):
    """The delivery log, read-only (the worker writes it)."""

    list_display = ["created_at", "channel_name", "event", "status", "attempts", "incident"]
    list_filter = ["status", "event", "channel_name"]
    inlines = [NotificationAttemptInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
