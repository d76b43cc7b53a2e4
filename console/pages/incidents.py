"""Console pages: ``/incidents/`` (filterable list) and ``/incidents/{id}/`` (timeline, actions,
postmortem). Viewers read; operators acknowledge, resolve, comment and write the postmortem
through :func:`incidents.services.incident_change` (one timeline entry per change, audited as
``incident_update`` with the signed-in user as actor), the same service the API's PATCH uses."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from agents.models import Agent
from console.pages.paging import pager_links
from console.roles import has_role, role_required
from core.errors import ApplicationError, ValidationFailed
from incidents import selectors
from incidents.models import INCIDENT_KINDS, Incident, IncidentStatus, Severity, kind_label
from incidents.schemas import POSTMORTEM_FIELDS, TEXT_MAX
from incidents.services import incident_change

PAGE_SIZE = 50
# The reference deployment's postmortem headings, over the model's field names.
POSTMORTEM_LABELS = {
    "impact": "Impact",
    "root_cause": "Root cause",
    "resolution": "Solution",
    "lessons": "Lesson",
}
_TIMELINE_CLASS = {"opened": "bad", "recurred": "bad", "acknowledged": "warn", "resolved": "ok"}


def duration_text(seconds: float) -> str:
    """``"45s"``, ``"12m 05s"``, ``"3h 07m"``, ``"2d 04h"``."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _duration(incident: Incident, now: datetime) -> dict[str, Any]:
    end = incident.resolved_at or now
    seconds = (end - incident.opened_at).total_seconds()
    return {
        "seconds": int(seconds),
        "text": duration_text(seconds),
        "ongoing": not incident.resolved_at,
    }


def _choice(request: HttpRequest, name: str, allowed: list[str], errors: list[str]) -> str:
    value = request.GET.get(name, "")
    if value and value not in allowed:
        errors.append(f"{name}: unknown value {value!r}; expected one of {', '.join(allowed)}")
        return ""
    return value


@require_GET
@role_required("viewer")
def incident_list(request: HttpRequest) -> HttpResponse:
    errors: list[str] = []
    state = _choice(request, "state", list(IncidentStatus.values), errors)
    severity = _choice(request, "severity", list(Severity.values), errors)
    kinds = sorted(
        set(INCIDENT_KINDS) | set(Incident.objects.values_list("kind", flat=True).distinct()),
        key=kind_label,
    )
    kind = _choice(request, "kind", kinds, errors)
    agent = request.GET.get("agent", "")
    if len(agent) > 64:
        errors.append("agent: at most 64 characters")
        agent = ""
    after = request.GET.get("after") or None
    incidents: list[Incident] = []
    cursor = None
    if not errors:
        try:
            incidents, cursor = selectors.incident_rows(
                status=state or None,
                severity=severity or None,
                agent=agent or None,
                kind=kind or None,
                after=after,
                limit=PAGE_SIZE,
            )
        except ValidationFailed as error:
            errors.extend(error.errors)
    now = timezone.now()
    rows = [
        {
            "incident": incident,
            "duration": _duration(incident, now),
            "kind": kind_label(incident.kind),
        }
        for incident in incidents
    ]
    context = {
        "rows": rows,
        "errors": errors,
        "state": state,
        "severity": severity,
        "agent": agent,
        "states": IncidentStatus.values,
        "severities": Severity.values,
        "kind": kind,
        "kinds": [{"value": value, "label": kind_label(value)} for value in kinds],
        "agents": list(Agent.objects.order_by("name").values_list("name", flat=True)),
        "filtered": bool(state or severity or agent or kind),
        **pager_links(request, cursor),
    }
    return render(request, "console/incidents.html", context, status=400 if errors else 200)


def _figures(data: Any) -> list[tuple[str, str]]:
    """A timeline entry's data (the detector's figures, an alert's labels) as name/value pairs;
    nested values as compact JSON."""
    if not isinstance(data, dict):
        return []
    return [
        (str(name), value if isinstance(value, str) else json.dumps(value, sort_keys=True))
        for name, value in data.items()
        if value is not None and value != {} and value != []
    ]


@require_GET
@role_required("viewer")
def incident_detail(request: HttpRequest, incident_id: int) -> HttpResponse:
    incident = selectors.incident_with_timeline(incident_id)
    if incident is None:
        raise Http404(f"incident {incident_id} does not exist")
    timeline = [
        {
            "event": event,
            "css": _TIMELINE_CLASS.get(event.kind, ""),
            "figures": _figures(event.data),
        }
        for event in incident.events.all()
    ]
    postmortem = [
        {"name": name, "label": POSTMORTEM_LABELS[name], "value": getattr(incident, name)}
        for name in POSTMORTEM_FIELDS
    ]
    context = {
        "incident": incident,
        "kind": kind_label(incident.kind),
        "timeline": timeline,
        "postmortem": postmortem,
        "postmortem_written": any(item["value"] for item in postmortem),
        "duration": _duration(incident, timezone.now()),
        "text_max": TEXT_MAX,
    }
    return render(request, "console/incident.html", context)


def _change(
    request: HttpRequest, incident_id: int, changes: dict[str, Any], done: str
) -> HttpResponse:
    """Apply ``changes`` as the signed-in operator (re-checked: a forged POST gets 403) and go
    back to the incident with a message saying what happened or what was wrong."""
    if not has_role(request.user, "operator"):
        raise PermissionDenied("changing an incident needs the operator role")
    if not Incident.objects.filter(pk=incident_id).exists():
        raise Http404(f"incident {incident_id} does not exist")
    try:
        incident_change(
            incident_id=incident_id,
            changes=changes,
            allowed=frozenset(),
            actor=f"user:{request.user.get_username()}",
        )
    except ApplicationError as error:
        messages.error(request, f"Incident #{incident_id} was not changed: {error.message}")
    else:
        messages.success(request, f"Incident #{incident_id} {done}.")
    return redirect("incident", incident_id=incident_id)


def _text(request: HttpRequest, name: str, label: str, errors: list[str]) -> str:
    value = request.POST.get(name, "").strip()
    if len(value) > TEXT_MAX:
        errors.append(f"{label}: at most {TEXT_MAX} characters")
    if "\x00" in value:
        errors.append(f"{label}: must not contain NUL characters")
    return value


def _refused(request: HttpRequest, incident_id: int, errors: list[str]) -> HttpResponse:
    messages.error(request, f"Incident #{incident_id} was not changed: {'; '.join(errors)}")
    return redirect("incident", incident_id=incident_id)


@require_POST
@role_required("operator")
def incident_acknowledge(request: HttpRequest, incident_id: int) -> HttpResponse:
    return _change(request, incident_id, {"status": IncidentStatus.ACKNOWLEDGED}, "acknowledged")


@require_POST
@role_required("operator")
def incident_resolve(request: HttpRequest, incident_id: int) -> HttpResponse:
    errors: list[str] = []
    note = _text(request, "note", "Note", errors)
    if errors:
        return _refused(request, incident_id, errors)
    changes: dict[str, Any] = {"status": IncidentStatus.RESOLVED}
    if note:
        changes["comment"] = note
    return _change(request, incident_id, changes, "resolved")


@require_POST
@role_required("operator")
def incident_comment(request: HttpRequest, incident_id: int) -> HttpResponse:
    errors: list[str] = []
    comment = _text(request, "comment", "Comment", errors)
    if not comment and not errors:
        errors.append("Comment: must not be empty")
    if errors:
        return _refused(request, incident_id, errors)
    return _change(request, incident_id, {"comment": comment}, "has a new comment")


@require_POST
@role_required("operator")
def incident_postmortem(request: HttpRequest, incident_id: int) -> HttpResponse:
    errors: list[str] = []
    changes = {
        name: _text(request, name, POSTMORTEM_LABELS[name], errors) for name in POSTMORTEM_FIELDS
    }
    if errors:
        return _refused(request, incident_id, errors)
    return _change(request, incident_id, changes, "postmortem saved")
