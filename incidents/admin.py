from __future__ import annotations

from django.contrib import admin

from incidents.models import Incident, IncidentEvent


class IncidentEventInline(admin.TabularInline):
    model = IncidentEvent
    extra = 0
    can_delete = False
    readonly_fields = ["at", "kind", "message", "actor", "data"]


@admin.register(Incident)
class IncidentAdmin(admin.ModelAdmin):
    list_display = ["id", "title", "kind", "severity", "status", "opened_at", "resolved_at"]
    list_filter = ["status", "severity", "kind"]
    inlines = [IncidentEventInline]
