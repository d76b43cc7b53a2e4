"""``GET /api/v1/audit`` (docs/INTERFACES.md §4): the audit trail of operator actions, newest
first, filtered by ``actor``, ``action`` and target, keyset-paginated.

``admin`` scope, from a key that is not restricted to some agents (the trail names every
agent's and every key's changes, as the keys endpoints do)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Field, Query, Router, Schema

from agents.access.auth import PermissionDenied, Principal
from agents.doors.auth import ApiKeyAuth
from agents.schemas import ERRORS
from console.audit_trail import FILTER_MAX, audit_out, audit_page

router = Router(auth=ApiKeyAuth(), tags=["audit"])


class AuditEventOut(Schema):
    at: datetime
    actor: str = Field(description='Who: "user:alice", "apikey:bw_ab12cd34", "system:apply"…')
    action: str = Field(description='"<entity>_<action>", e.g. "apikey_revoke".')
    target_type: str
    target_id: str
    before: Any = Field(description="The target's state before (an object), or null.")
    after: Any = Field(description="The target's state after (an object), or null.")
    reason: str
    request_id: str = Field(description="The X-Request-ID of the request that made it.")


class AuditListOut(Schema):
    items: list[AuditEventOut]
    next: str | None = Field(description="Opaque cursor for the next page (`after=`), or null.")


class AuditQuery(Schema):
    actor: str | None = Field(default=None, max_length=FILTER_MAX["actor"])
    action: str | None = Field(default=None, max_length=FILTER_MAX["action"])
    target_type: str | None = Field(default=None, max_length=FILTER_MAX["target_type"])
    target_id: str | None = Field(default=None, max_length=FILTER_MAX["target_id"])
    after: str | None = Field(default=None, max_length=200, description="A `next` cursor.")
    limit: int = Field(default=50, ge=1, le=200)


@router.get("/audit", response={200: AuditListOut, **ERRORS}, summary="Read the audit trail")
async def audit_list(request: HttpRequest, query: Query[AuditQuery]) -> dict[str, Any]:
    """Newest first; each filter is an exact match. A cursor that is not one of ours is 422."""
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require("admin")
    if principal.agents:
        raise PermissionDenied("a key restricted to some agents cannot read the audit trail")

    def read() -> dict[str, Any]:
        rows, cursor = audit_page(
            actor=query.actor,
            action=query.action,
            target_type=query.target_type,
            target_id=query.target_id,
            after=query.after,
            limit=query.limit,
        )
        return {"items": [audit_out(row) for row in rows], "next": cursor}

    return await sync_to_async(read)()
