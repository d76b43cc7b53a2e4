"""Writes shared by every app: the audit trail."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

from core.models import AuditEvent
from core.request_id import current_request_id


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of ``value`` (Decimal and datetimes as strings)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def audit_record(
    *,
    actor: str,
    action: str,
    target_type: str,
    target_id: str,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    reason: str = "",
    request_id: str = "",
) -> AuditEvent:
    """One audit row. ``request_id`` defaults to the request being handled (every door binds
    one, ``core.request_id``), so a write made for an API call, a console page or the admin
    names the request that made it."""
    event = AuditEvent(
        actor=actor,
        action=action,
        target_type=target_type,
        target_id=target_id,
        before=jsonable(before) if before is not None else None,
        after=jsonable(after) if after is not None else None,
        reason=reason,
        request_id=request_id or current_request_id(),
    )
    event.save()
    return event
