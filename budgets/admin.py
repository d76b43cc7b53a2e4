from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from budgets.models import Budget, SpendEntry


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ["scope", "agent", "api_key", "window", "limit_usd", "paused"]
    list_filter = ["scope", "window", "paused"]


@admin.register(SpendEntry)
class SpendEntryAdmin(admin.ModelAdmin):
    list_display = ["execution_id", "agent_name", "model", "cost_usd", "at"]
    search_fields = ["execution_id", "agent_name"]
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
