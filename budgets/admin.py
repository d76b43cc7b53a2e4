"""Budgets are read-only here: their limits are config as code (``apply``, an agent's
``daily_budget_usd`` in the agent admin); pausing and resuming are actions calling
``budget_set_paused`` (audited). The ledger is append-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest

from budgets.models import Budget, SpendEntry
from budgets.services import budget_set_paused


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Budget)
class BudgetAdmin(_ReadOnly):
    list_display = ["scope", "agent", "api_key", "window", "limit_usd", "paused"]
    list_filter = ["scope", "window", "paused"]
    actions = ["pause", "resume"]

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return bool(request.user.has_perm("budgets.change_budget"))

    @admin.action(
        description="Pause the selected budgets (every call under them is refused)",
        permissions=["operate"],
    )
    def pause(self, request: HttpRequest, queryset: Any) -> None:
        self._set_paused(request, queryset, paused=True)

    @admin.action(description="Resume the selected budgets", permissions=["operate"])
    def resume(self, request: HttpRequest, queryset: Any) -> None:
        self._set_paused(request, queryset, paused=False)

    def _set_paused(self, request: HttpRequest, queryset: Any, *, paused: bool) -> None:
        verb = "paused" if paused else "resumed"
        changed = 0
        for budget_id in list(queryset.exclude(paused=paused).values_list("pk", flat=True)):
            budget_set_paused(
                budget_id=budget_id,
                paused=paused,
                actor=f"user:{request.user.get_username()}",
                reason=f"{verb} in the admin",
            )
            changed += 1
        self.message_user(request, f"{verb.capitalize()} {changed} budget(s).", messages.SUCCESS)


@admin.register(SpendEntry)
class SpendEntryAdmin(_ReadOnly):
    list_display = ["execution_id", "agent_name", "model", "cost_usd", "at"]
    search_fields = ["execution_id", "agent_name"]
    date_hierarchy = "at"
