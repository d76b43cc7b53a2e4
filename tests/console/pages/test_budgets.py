"""``/budgets/`` through the Django test client: rendering, actions, roles, audit."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from agents.models import Agent
from budgets.models import Budget, BudgetScope, BudgetWindow
from core.models import AuditEvent
from tests.console.pages.conftest import ClientAs

pytestmark = pytest.mark.django_db


@pytest.fixture
def budget() -> Budget:
    agent = Agent.objects.create(name="support", model="m")
    return Budget.objects.create(
        scope=BudgetScope.AGENT, agent=agent, window=BudgetWindow.DAILY, limit_usd=Decimal(5)
    )


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_every_budget_is_listed_with_its_figures_bars_and_state(
    budget: Budget, client_as: ClientAs
) -> None:
    Budget.objects.create(scope=BudgetScope.GLOBAL, window=BudgetWindow.MONTHLY, limit_usd=100)
    html = client_as("viewer").get("/budgets/").content.decode()
    assert "agent:support" in html
    assert "global:monthly" in html
    assert f'data-budget-id="{budget.pk}"' in html
    assert '<span class="pill ok" data-field="state">ok</span>' in html
    assert 'data-fraction="0.0000"' in html
    assert "$5.00" in html
    assert "style=" not in html  # bar widths come from budgets.js (the CSP)


def test_a_viewer_sees_no_actions_and_an_operator_does(budget: Budget, client_as: ClientAs) -> None:
    assert "Pause" not in client_as("viewer").get("/budgets/").content.decode()
    html = client_as("operator").get("/budgets/").content.decode()
    assert f'action="/budgets/{budget.pk}/pause/"' in html
    assert f'<label for="pause-reason-{budget.pk}">Reason</label>' in html
    assert 'data-confirm="Pause budget agent:support?' in html
    assert f'<label for="raise-amount-{budget.pk}">Amount (USD)</label>' in html


def test_pause_then_resume_are_audited_with_the_user_and_reason(
    budget: Budget, client_as: ClientAs
) -> None:
    client = client_as("operator")
    response = client.post(f"/budgets/{budget.pk}/pause/", {"reason": "runaway"}, follow=True)
    budget.refresh_from_db()
    assert budget.paused
    assert any("paused" in m for m in _messages(response))
    assert '<span class="pill paused" data-field="state">paused</span>' in (
        response.content.decode()
    )
    assert f'action="/budgets/{budget.pk}/resume/"' in response.content.decode()
    client.post(f"/budgets/{budget.pk}/resume/", {"reason": "fixed"})
    budget.refresh_from_db()
    assert not budget.paused
    events = list(AuditEvent.objects.order_by("id").values_list("action", "reason", "actor"))
    assert [e[:2] for e in events] == [("budget_pause", "runaway"), ("budget_resume", "fixed")]
    assert all(actor.startswith("user:operator-") for _, _, actor in events)


def test_raise_until_window_end_is_audited(budget: Budget, client_as: ClientAs) -> None:
    response = client_as("operator").post(
        f"/budgets/{budget.pk}/raise/", {"amount_usd": "2.50", "reason": "launch day"}, follow=True
    )
    budget.refresh_from_db()
    assert budget.raise_usd == Decimal("2.5")
    assert budget.raise_until is not None
    assert any("raised by $2.50" in m for m in _messages(response))
    event = AuditEvent.objects.get(action="budget_raise")
    assert event.reason == "launch day"
    assert "$7.50" in response.content.decode()  # the effective limit


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"amount_usd": "-3", "reason": "x"}, "amount_usd: must be positive"),
        ({"amount_usd": "lots", "reason": "x"}, "amount_usd: must be a number"),
        ({"amount_usd": "1.0000001", "reason": "x"}, "amount_usd: at most 6 decimal places"),
        ({"amount_usd": "1", "reason": "  "}, "reason: must not be empty"),
    ],
)
def test_bad_raises_are_refused_with_the_services_message(
    budget: Budget, form: dict[str, str], message: str, client_as: ClientAs
) -> None:
    response = client_as("operator").post(f"/budgets/{budget.pk}/raise/", form, follow=True)
    assert any(message in m and "unchanged" in m for m in _messages(response))
    budget.refresh_from_db()
    assert budget.raise_usd is None
    assert not AuditEvent.objects.exists()


def test_a_pause_without_a_reason_is_refused(budget: Budget, client_as: ClientAs) -> None:
    response = client_as("operator").post(f"/budgets/{budget.pk}/pause/", {}, follow=True)
    assert any("reason: must not be empty" in m for m in _messages(response))
    budget.refresh_from_db()
    assert not budget.paused


def test_a_viewers_forged_post_gets_403_and_changes_nothing(
    budget: Budget, client_as: ClientAs
) -> None:
    client = client_as("viewer")
    for action, form in (
        ("pause", {"reason": "x"}),
        ("raise", {"amount_usd": "5", "reason": "x"}),
    ):
        assert client.post(f"/budgets/{budget.pk}/{action}/", form).status_code == 403
    budget.refresh_from_db()
    assert not budget.paused
    assert budget.raise_usd is None
    assert not AuditEvent.objects.exists()
    assert client_as(None).post(f"/budgets/{budget.pk}/pause/", {"reason": "x"}).status_code == 403


def test_unknown_budgets_and_actions_are_404(budget: Budget, client_as: ClientAs) -> None:
    client = client_as("operator")
    assert client.post("/budgets/999999/pause/", {"reason": "x"}).status_code == 404
    assert client.post(f"/budgets/{budget.pk}/delete/", {"reason": "x"}).status_code == 404
    assert client.get(f"/budgets/{budget.pk}/pause/").status_code == 405


def test_no_budgets_says_how_to_add_one(client_as: ClientAs) -> None:
    html = client_as("viewer").get("/budgets/").content.decode()
    assert "No budgets yet" in html
    assert "daily_budget_usd" in html


def test_the_page_query_count_does_not_grow_with_budgets(
    django_assert_max_num_queries: Any,
    client_as: ClientAs,
) -> None:
    for i in range(30):
        agent = Agent.objects.create(name=f"agent-{i}", model="m")
        Budget.objects.create(scope=BudgetScope.AGENT, agent=agent, limit_usd=Decimal(10))
    client = client_as("operator")
    # session, user, groups, budgets, the ledger's last hour (one aggregate for all)
    with django_assert_max_num_queries(6):
        assert client.get("/budgets/").status_code == 200
