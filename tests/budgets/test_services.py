"""Pausing, resuming and raising a budget: validated, audited, in force via the config version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.config.live import config_version_current
from budgets.models import Budget
from budgets.services import budget_pause, budget_raise, budget_resume, budget_set_paused
from core.errors import NotFound, ValidationFailed
from core.models import AuditEvent
from tests.budgets.conftest import NOW, budget

pytestmark = pytest.mark.django_db


def test_pausing_and_resuming_are_audited_and_bump_the_config_version() -> None:
    b = budget()
    version = config_version_current()

    budget_pause(budget_id=b.pk, actor="user:alice", reason="runaway agent")
    assert Budget.objects.get(pk=b.pk).paused
    assert config_version_current() > version
    budget_resume(budget_id=b.pk, actor="user:alice")
    assert not Budget.objects.get(pk=b.pk).paused

    events = list(AuditEvent.objects.filter(target_type="budget").order_by("at", "id"))
    assert [(e.action, e.actor) for e in events] == [
        ("budget_pause", "user:alice"),
        ("budget_resume", "user:alice"),
    ]
    assert events[0].reason == "runaway agent"
    before: Any = events[0].before
    after: Any = events[0].after
    assert (before["paused"], after["paused"]) == (False, True)


def test_pausing_a_paused_budget_changes_and_records_nothing() -> None:
    b = budget(paused=True)
    version = config_version_current()
    budget_set_paused(budget_id=b.pk, paused=True, actor="user:alice")
    assert config_version_current() == version
    assert not AuditEvent.objects.exists()


def test_an_unknown_budget_is_not_found() -> None:
    with pytest.raises(NotFound):
        budget_pause(budget_id=404, actor="user:alice")
    with pytest.raises(NotFound):
        budget_raise(budget_id=404, amount_usd=1, reason="x", actor="user:alice")


def test_a_raise_lasts_until_the_current_window_ends_in_the_budgets_time_zone() -> None:
    b = budget(limit="100", timezone="Europe/Paris")
    version = config_version_current()

    raised = budget_raise(
        budget_id=b.pk, amount_usd=50, reason="launch day", actor="user:alice", now=NOW
    )

    assert raised.raise_usd == Decimal(50)
    # Midnight in Paris (UTC+1 in March before the 29th) is 23:00 UTC.
    assert raised.raise_until == datetime(2026, 3, 11, 23, 0, tzinfo=UTC)
    assert config_version_current() > version
    event = AuditEvent.objects.get(action="budget_raise")
    assert event.reason == "launch day"
    recorded: Any = event.after
    assert recorded["amount_usd"] == "50"
    assert recorded["raise_until"] == "2026-03-11T23:00:00+00:00"


def test_a_monthly_budgets_raise_lasts_until_the_month_ends() -> None:
    b = budget(window="monthly", limit="1000")
    raised = budget_raise(budget_id=b.pk, amount_usd="250.5", reason="x", actor="a", now=NOW)
    assert raised.raise_until == datetime(2026, 4, 1, tzinfo=UTC)
    assert raised.raise_usd == Decimal("250.5")


def test_raises_in_one_window_add_up_and_a_lapsed_raise_is_replaced() -> None:
    b = budget(limit="100")
    budget_raise(budget_id=b.pk, amount_usd=10, reason="a", actor="a", now=NOW)
    budget_raise(budget_id=b.pk, amount_usd=5, reason="b", actor="a", now=NOW)
    assert Budget.objects.get(pk=b.pk).raise_usd == Decimal(15)

    tomorrow = NOW + timedelta(days=1)
    later = budget_raise(budget_id=b.pk, amount_usd=7, reason="c", actor="a", now=tomorrow)
    assert later.raise_usd == Decimal(7)
    assert later.raise_until == datetime(2026, 3, 13, tzinfo=UTC)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        pytest.param(0, "amount_usd: must be positive", id="zero"),
        pytest.param(-5, "amount_usd: must be positive", id="negative"),
        pytest.param(float("inf"), "amount_usd: must be a finite number", id="infinite"),
        pytest.param(float("nan"), "amount_usd: must be a finite number", id="nan"),
        pytest.param("lots", "amount_usd: must be a number", id="text"),
        pytest.param(True, "amount_usd: must be a number", id="boolean"),
        pytest.param(100_000_000, "amount_usd: must be less than 100000000", id="too-large"),
        pytest.param("0.0000001", "amount_usd: at most 6 decimal places", id="too-fine"),
    ],
)
def test_a_bad_raise_amount_is_refused_with_the_fields_name(amount: Any, message: str) -> None:
    b = budget()
    with pytest.raises(ValidationFailed) as caught:
        budget_raise(budget_id=b.pk, amount_usd=amount, reason="x", actor="a", now=NOW)
    assert caught.value.errors == [message]
    assert Budget.objects.get(pk=b.pk).raise_usd is None


def test_raises_that_would_total_too_much_are_refused() -> None:
    b = budget()
    budget_raise(budget_id=b.pk, amount_usd=60_000_000, reason="x", actor="a", now=NOW)
    with pytest.raises(ValidationFailed, match="amount_usd: this window's raises would total"):
        budget_raise(budget_id=b.pk, amount_usd=50_000_000, reason="x", actor="a", now=NOW)
    assert Budget.objects.get(pk=b.pk).raise_usd == Decimal(60_000_000)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        pytest.param("", "reason: must not be empty", id="empty"),
        pytest.param("   ", "reason: must not be empty", id="blank"),
        pytest.param("x" * 501, "reason: must be at most 500 characters", id="too-long"),
    ],
)
def test_a_raise_needs_a_reason(reason: str, message: str) -> None:
    b = budget()
    with pytest.raises(ValidationFailed) as caught:
        budget_raise(budget_id=b.pk, amount_usd=1, reason=reason, actor="a", now=NOW)
    assert caught.value.errors == [message]
