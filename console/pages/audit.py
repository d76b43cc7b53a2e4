"""Console page ``/audit/`` (admin only): the audit trail, newest first, filtered by actor,
action and target, each row expandable to a compact per-key before/after diff, its reason and
request id; keyset-paginated on ``(at, id)`` (:mod:`console.audit_trail`)."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.audit_trail import FILTER_MAX, audit_diff, audit_page
from console.pages.paging import pager_links
from console.roles import role_required
from core.errors import ValidationFailed

PAGE_SIZE = 50
FILTERS = ("actor", "action", "target_type", "target_id")


def _show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@require_GET
@role_required("admin")
def audit_list(request: HttpRequest) -> HttpResponse:
    filters = {name: request.GET.get(name, "").strip() for name in FILTERS}
    after = request.GET.get("after") or None
    errors: list[str] = []
    events: list[Any] = []
    cursor = None
    try:
        events, cursor = audit_page(
            **{name: value or None for name, value in filters.items()},
            after=after,
            limit=PAGE_SIZE,
        )
    except ValidationFailed as error:
        errors = error.errors
    rows = [
        {
            "event": event,
            "diff": [
                line | {"before_text": _show(line["before"]), "after_text": _show(line["after"])}
                for line in audit_diff(event.before, event.after)
            ],
        }
        for event in events
    ]
    context = {
        "rows": rows,
        "filters": filters,
        "filter_max": FILTER_MAX,
        "filtered": any(filters.values()),
        "errors": errors,
        **pager_links(request, cursor),
    }
    return render(request, "console/audit.html", context, status=400 if errors else 200)
