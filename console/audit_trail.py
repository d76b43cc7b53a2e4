"""Reads of the audit trail (:class:`core.models.AuditEvent`), for ``GET /api/v1/audit``
(:mod:`console.audit_api`) and the ``/audit/`` page.

Newest first, keyset-paginated on ``(at, id)``: one query per page whatever the size of the
trail. Indexes (console migration 0004): ``audit_time`` (at, id) serves the unfiltered walk,
``audit_actor_time`` and ``audit_action_time`` the actor and action filters, ``audit_target``
(target_type, target_id, at) a target.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import Q

from agents.selectors import cursor_decode, cursor_encode
from core.errors import ValidationFailed
from core.models import AuditEvent

FILTER_MAX = {"actor": 150, "action": 64, "target_type": 64, "target_id": 128}


def _cursor(after: str) -> tuple[datetime, int]:
    when, ident = cursor_decode(after, 2)
    try:
        at = datetime.fromisoformat(when)
    except ValueError:
        raise ValidationFailed(["after: invalid cursor"]) from None
    if at.tzinfo is None or not (ident.isascii() and ident.isdigit() and len(ident) <= 18):
        raise ValidationFailed(["after: invalid cursor"])
    return at, int(ident)


def audit_page(
    *,
    actor: str | None = None,
    action: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    after: str | None = None,
    limit: int = 50,
) -> tuple[list[AuditEvent], str | None]:
    """A page of audit events matching every filter given (exact values), and the cursor of
    the next page (or None). :class:`ValidationFailed` names a bad cursor or filter."""
    filters = {
        "actor": actor,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
    }
    errors = [
        f"{name}: at most {FILTER_MAX[name]} characters"
        for name, value in filters.items()
        if value and len(value) > FILTER_MAX[name]
    ]
    if errors:
        raise ValidationFailed(errors)
    rows = AuditEvent.objects.filter(**{name: value for name, value in filters.items() if value})
    if after is not None:
        at, last = _cursor(after)
        rows = rows.filter(at__lte=at).filter(Q(at__lt=at) | Q(at=at, id__lt=last))
    page = list(rows.order_by("-at", "-id")[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    cursor = cursor_encode(page[-1].at.isoformat(), str(page[-1].pk)) if more else None
    return page, cursor


def audit_out(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "actor": event.actor,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "before": event.before,
        "after": event.after,
        "reason": event.reason,
        "request_id": event.request_id,
    }


def audit_diff(before: Any, after: Any) -> list[dict[str, Any]]:
    """A compact per-key diff of two audit states: the keys whose value changed (or appeared,
    or went), each ``{"key", "before", "after", "change": "changed"|"added"|"removed"}``.
    Non-mapping states compare as one value under the key ``""``."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        if before == after:
            return []
        return [{"key": "", "before": before, "after": after, "change": "changed"}]
    lines = []
    for key in sorted(set(before) | set(after)):
        if key not in before:
            lines.append({"key": key, "before": None, "after": after[key], "change": "added"})
        elif key not in after:
            lines.append({"key": key, "before": before[key], "after": None, "change": "removed"})
        elif before[key] != after[key]:
            lines.append(
                {"key": key, "before": before[key], "after": after[key], "change": "changed"}
            )
    return lines
