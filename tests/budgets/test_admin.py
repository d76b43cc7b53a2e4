"""Budgets are read-only in the admin; pausing and resuming go through the audited service."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from agents.models import Agent
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.models import AuditEvent

pytestmark = pytest.mark.django_db

BUDGETS = "/admin/budgets/budget/"


@pytest.fixture
def admin_client(client: Client, django_user_model: Any) -> Client:
    user = django_user_model.objects.create_superuser("admin", "admin@example.com", None)
    client.force_login(user)  # no password to hash
    return client


@pytest.fixture
def budget() -> Budget:
    agent = Agent.objects.create(name="support", model="m")
    return Budget.objects.create(
        scope=BudgetScope.AGENT, agent=agent, window=BudgetWindow.DAILY, limit_usd=Decimal(5)
    )


def test_budgets_cannot_be_added_changed_or_deleted_in_the_admin(
    admin_client: Client, budget: Budget
) -> None:
    assert admin_client.get(f"{BUDGETS}add/").status_code == 403
    change = {"scope": "agent", "agent": budget.agent_id, "window": "daily", "limit_usd": "999"}
    assert admin_client.post(f"{BUDGETS}{budget.pk}/change/", change).status_code == 403
    assert admin_client.post(f"{BUDGETS}{budget.pk}/delete/", {"post": "yes"}).status_code == 403
    assert admin_client.get(f"{BUDGETS}{budget.pk}/change/").status_code == 200  # to look at
    budget.refresh_from_db()
    assert budget.limit_usd == 5
    assert not AuditEvent.objects.exists()


def test_pausing_budgets_in_the_admin_is_the_audited_service_once_per_budget(
    admin_client: Client, budget: Budget
) -> None:
    form = {"action": "pause", "_selected_action": [budget.pk]}
    response = admin_client.post(BUDGETS, form, follow=True)
    assert "Paused 1 budget(s)." in response.content.decode()
    budget.refresh_from_db()
    assert budget.paused
    event = AuditEvent.objects.get()
    assert (event.action, event.actor, event.target_id) == (
        "budget_pause",
        "user:admin",
        str(budget.pk),
    )
    assert (event.before or {})["paused"] is False
    assert (event.after or {})["paused"] is True
    assert event.reason == "paused in the admin"

    admin_client.post(BUDGETS, form)  # already paused: nothing to write
    admin_client.post(BUDGETS, form | {"action": "resume"})
    budget.refresh_from_db()
    assert not budget.paused
    assert list(AuditEvent.objects.values_list("action", flat=True).order_by("id")) == [
        "budget_pause",
        "budget_resume",
    ]
