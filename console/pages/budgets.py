"""``/budgets/``: every budget in its current window (spent, reserved, remaining, forecast, state)
and the operator actions Pause / Resume / Raise until window end (docs/INTERFACES.md §4).

The page reads the budgets (one query), their counters from the shared state (what the runtime
enforces) and the ledger's last hour for the forecast (one query): its cost does not grow with
history. ``static/js/budgets.js`` sizes the bars and keeps the figures live from ``bw:snapshot``.
Actions are POSTs that re-check the operator role and call ``budgets.services`` (audited).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from agents.backends import on_state_sync
from budgets.selectors import (
    BudgetStatus,
    budget_get,
    budget_list,
    budget_scope_label,
    budget_spans,
    budget_statuses,
)
from budgets.services import REASON_MAX, budget_raise, budget_set_paused
from console.roles import has_role, role_required
from core.errors import NotFound, ValidationFailed

ACTIONS = ("pause", "resume", "raise")


def _fraction(part: Decimal, whole: Decimal) -> str:
    """``part / whole`` for a bar's width (0..1, more than 1 when over), as text for data-*."""
    if whole <= 0:
        return "1" if part > 0 else "0"
    return f"{min(Decimal(10), part / whole):.4f}"


def budget_rows() -> list[dict[str, Any]]:
    """Each budget's status and its bar fractions. Two or three queries, one state read."""
    budgets = budget_list()
    now = timezone.now()
    spans = budget_spans(budgets, now=now)
    keys = tuple(span.key for span in spans)
    windows = on_state_sync(lambda store: store.budget_windows(keys)) if keys else {}
    statuses = budget_statuses(spans=spans, usage=windows, now=now)
    return [_row(status) for status in statuses]


def _row(status: BudgetStatus) -> dict[str, Any]:
    limit = status.limit_usd
    return {
        "status": status,
        "spent_fraction": _fraction(status.spent_usd, limit),
        "reserved_fraction": _fraction(status.reserved_usd, limit),
        "forecast_fraction": _fraction(status.forecast_usd, limit),
        "remaining_fraction": _fraction(status.remaining_usd, limit),
    }


@role_required("viewer")
def budgets(request: HttpRequest) -> HttpResponse:
    return render(
        request, "console/budgets.html", {"rows": budget_rows(), "reason_max": REASON_MAX}
    )


@require_POST
@role_required("viewer")
def budget_action(request: HttpRequest, budget_id: int, action: str) -> HttpResponse:
    """Pause, resume or raise one budget; the operator role is checked again here."""
    if not has_role(request.user, "operator"):
        raise PermissionDenied("changing a budget needs the operator role")
    if action not in ACTIONS:
        raise Http404(f"no budget action {action!r}")
    try:
        budget = budget_get(budget_id=budget_id)
    except NotFound as exc:
        raise Http404(str(exc)) from None
    label = f"{budget_scope_label(budget)} (#{budget.pk})"
    actor = f"user:{request.user.get_username()}"
    reason = request.POST.get("reason", "").strip()
    back = HttpResponseRedirect(reverse("budgets"))
    if not reason:
        messages.error(request, f"Budget {label} unchanged: reason: must not be empty.")
        return back
    if len(reason) > REASON_MAX:
        messages.error(
            request, f"Budget {label} unchanged: reason: at most {REASON_MAX} characters."
        )
        return back
    try:
        if action == "raise":
            amount = request.POST.get("amount_usd", "").strip()
            updated = budget_raise(
                budget_id=budget.pk, amount_usd=amount, reason=reason, actor=actor
            )
            messages.success(
                request,
                f"Budget {label} raised by ${amount} until "
                f"{updated.raise_until:%Y-%m-%d %H:%M} UTC (now +${updated.raise_usd} in "
                "this window).",
            )
        else:
            paused = action == "pause"
            was = budget.paused
            budget_set_paused(budget_id=budget.pk, paused=paused, actor=actor, reason=reason)
            if was == paused:
                messages.info(
                    request, f"Budget {label} was already {'paused' if paused else 'running'}."
                )
            elif paused:
                messages.success(request, f"Budget {label} paused: every call under it is refused.")
            else:
                messages.success(request, f"Budget {label} resumed.")
    except ValidationFailed as exc:
        messages.error(request, f"Budget {label} unchanged: {'; '.join(exc.errors)}.")
    except NotFound as exc:
        messages.error(request, f"Budget {label} unchanged: {exc}.")
    return back
