"""Console page ``/drills/``: the past drills with their figures and checks, and (operators)
a form that starts one. A drill started here runs in the background (a Celery task, or the
in-process worker in embedded mode: ``console.tasks.drill_run``) against this same deployment,
with a temporary admin key of its own; its card polls ``/drills/{id}/`` every 2 s while it runs.
One drill at a time: a second start while one is queued or running is refused."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from agents.backends import work_dispatch
from agents.models import Agent
from console.drills import selectors
from console.drills.services import drill_create
from console.models import DrillKind, DrillRun
from console.roles import has_role, role_required
from console.tasks import DRILL_TIME_LIMIT_S

PAGE_SIZE = 30
POLL_S = 2
# A drill still "running" past its task's hard time limit was lost with its process.
STALE_AFTER_S = DRILL_TIME_LIMIT_S + 60
PILL = {"passed": "ok", "failed": "bad", "error": "bad", "unsupported": "paused"}
WHAT = {
    "outage": "The primary model's upstream answers 503 for 45 s: time to open the breaker, "
    "requests served by the fallback model, the breaker incident opened and resolved.",
    "cost-spike": "A runaway loop of 4,000-token answers against a $0.50 daily budget: where "
    "the budget stops the spend, the requests it refuses, the incident and its notification.",
    "memory-leak": "An allocation growth injected in one serve worker: the RSS growth, the "
    "memory_growth incident, the worker recycled, no request lost (needs serve --workers N "
    "--max-rss-mb M).",
}


def card(drill: DrillRun) -> dict[str, Any]:
    figures = drill.figures or {}
    rows = [
        {"label": label[3:], "section": True}
        if label.startswith("-- ")
        else {"label": label, "value": value}
        for label, value in figures.get("rows", [])
    ]
    checks = figures.get("checks", [])
    return {
        "drill": drill,
        "rows": rows,
        "checks": checks,
        "held": sum(1 for c in checks if c["ok"]),
        "poll": not drill.done,
        "pill": PILL.get(drill.status, drill.status),
    }


@require_GET
@role_required("viewer")
def drill_list(request: HttpRequest) -> HttpResponse:
    drills = selectors.drill_rows(limit=PAGE_SIZE)
    can_start = has_role(request.user, "operator")
    context = {
        "cards": [card(d) for d in drills],
        "kinds": [{"value": v, "label": label, "what": WHAT[v]} for v, label in DrillKind.choices],
        "agents": (
            list(
                Agent.objects.exclude(name__startswith="drill-")
                .order_by("name")
                .values_list("name", flat=True)
            )
            if can_start
            else []
        ),
        "can_start": can_start,
        "active": selectors.drill_active(stale_after_s=STALE_AFTER_S) if can_start else None,
        "poll_s": POLL_S,
    }
    return render(request, "console/drills.html", context)


@require_GET
@role_required("viewer")
def drill_card(request: HttpRequest, drill_id: int) -> HttpResponse:
    """One drill's card (what the list's cards poll while their drill runs)."""
    drill = selectors.drill_get(drill_id=drill_id)
    if drill is None:
        raise Http404(f"drill {drill_id} does not exist")
    return render(
        request, "console/_drill.html", {"c": card(drill), "poll_s": POLL_S, "open": True}
    )


def _base_url(request: HttpRequest) -> str:
    configured = settings.BREAKWATER_DRILL_URL
    if configured:
        return str(configured).rstrip("/")
    return f"{request.scheme}://{request.get_host()}"


@require_POST
def drill_start(request: HttpRequest) -> HttpResponse:
    """Start a drill (operator): it runs in the background; the list shows its progress."""
    if not request.user.is_authenticated:
        raise PermissionDenied("sign in first")
    if not has_role(request.user, "operator"):
        raise PermissionDenied("starting a drill needs the operator role")
    back = HttpResponseRedirect(reverse("drills"))
    kind = request.POST.get("kind", "")
    if kind not in DrillKind.values:
        messages.error(
            request, f"No drill started: kind: expected one of {', '.join(DrillKind.values)}."
        )
        return back
    agent = request.POST.get("agent", "").strip()
    if agent and not Agent.objects.filter(name=agent).exists():
        messages.error(request, f"No drill started: agent: no agent {agent!r}.")
        return back
    active = selectors.drill_active(stale_after_s=STALE_AFTER_S)
    if active is not None:
        messages.error(
            request,
            f"No drill started: drill {active.pk} ({active.kind}) is still {active.status}.",
        )
        return back
    drill = drill_create(
        kind=kind,
        options={"base_url": _base_url(request), "agent": agent},
        actor=f"user:{request.user.get_username()}",
    )
    work_dispatch(
        "console.tasks.drill_run",
        {"drill_id": drill.pk},
        soft_time_limit=DRILL_TIME_LIMIT_S,
        time_limit=DRILL_TIME_LIMIT_S + 60,
    )
    messages.success(request, f"Drill {drill.pk} ({kind}) started; its card follows it below.")
    return back
