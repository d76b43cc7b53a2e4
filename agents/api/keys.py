"""API keys over the API (docs/INTERFACES.md §4): list, create (the key is shown once), revoke.

``admin`` scope, from a key that is not restricted to some agents: a restricted key managing
keys could mint itself an unrestricted one. Every write is the service the CLI
(``create_api_key``, ``revoke_api_key``) and the admin call (``agents.services``), audited with
the acting key, before/after, the reason and the request's ``X-Request-ID``. A revocation is in
force in this process at once and in every other within about a second (config version poll).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils import timezone
from ninja import Field, Query, Router, Schema, Status

from agents import selectors
from agents.access import services as access_services
from agents.access.auth import PermissionDenied, Principal
from agents.doors.auth import ApiKeyAuth
from agents.engine import get_engine
from agents.schemas import ERRORS, PageQuery, StrictSchema
from core.errors import ValidationFailed

router = Router(auth=ApiKeyAuth(), tags=["keys"])

ScopeName = Literal["read", "execute", "operate", "admin"]
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class ApiKeyOut(Schema):
    id: int
    prefix: str = Field(description="The key's public part (`bw_` + 8 characters).")
    name: str
    scopes: list[ScopeName]
    agents: list[str] = Field(description="The agents it may use; empty = every agent.")
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(
        description="Buffered by each serving process: up to 30 s behind."
    )
    created_at: datetime


class ApiKeyCreatedOut(ApiKeyOut):
    key: str = Field(description="The key itself: shown in this answer only, never again.")


class ApiKeyListOut(Schema):
    items: list[ApiKeyOut]
    next: str | None = Field(description="Opaque cursor for the next page (`after=`), or null.")


class ApiKeyIn(StrictSchema):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[ScopeName] = Field(
        min_length=1, max_length=4, description="admin implies every scope; operate implies read."
    )
    agents: list[str] = Field(
        default_factory=list,
        max_length=access_services.MAX_KEY_AGENTS,
        description="Agent names it may use; empty = every agent.",
    )
    expires_at: datetime | None = Field(default=None, description="With a UTC offset; future.")
    rate_limit_rpm: int | None = Field(default=None, ge=1, le=2_147_483_647)
    rate_limit_tpm: int | None = Field(default=None, ge=1, le=2_147_483_647)


class ApiKeyRevokeIn(StrictSchema):
    reason: str = Field(default="", max_length=1000, description="Kept in the audit trail.")


def _admin(request: HttpRequest) -> Principal:
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require("admin")
    if principal.agents:
        raise PermissionDenied("a key restricted to some agents cannot manage API keys")
    return principal


def _request_id(request: HttpRequest) -> str:
    """The caller's (or its proxy's) ``X-Request-ID``, when it is a sane one, for the audit."""
    value = request.headers.get("X-Request-ID", "")
    return value if _REQUEST_ID.match(value) else ""


@router.get(
    "/keys",
    response={200: ApiKeyListOut, **ERRORS},
    summary="List API keys",
)
async def api_key_list(request: HttpRequest, query: Query[PageQuery]) -> dict[str, Any]:
    """Every key, revoked and expired ones included, newest first, without secrets."""
    _admin(request)
    return await sync_to_async(selectors.api_key_page)(after=query.after, limit=query.limit)


@router.post(
    "/keys",
    response={201: ApiKeyCreatedOut, **ERRORS},
    summary="Create an API key",
)
async def api_key_create(request: HttpRequest, payload: ApiKeyIn) -> Status:
    """A new key; the answer's ``key`` is the only time it is shown (only its SHA-256 is
    stored). 422 names every wrong field (unknown agents, a past or offset-less expiry)."""
    principal = _admin(request)
    expires_at = payload.expires_at
    if expires_at is not None and expires_at.tzinfo is not None and expires_at <= timezone.now():
        # Here, not in the service: tests and tools may make an expired key on purpose.
        raise ValidationFailed(["expires_at: must be in the future"])

    def create() -> dict[str, Any]:
        created = access_services.api_key_create(
            name=payload.name,
            scopes=payload.scopes,
            agents=payload.agents,
            expires_at=payload.expires_at,
            rate_limit_rpm=payload.rate_limit_rpm,
            rate_limit_tpm=payload.rate_limit_tpm,
            actor=f"apikey:{principal.prefix}",
            request_id=_request_id(request),
        )
        return selectors.api_key_out(created.api_key) | {"key": created.plaintext}

    body = await sync_to_async(create)()
    await sync_to_async(get_engine().config.reload)()  # usable here at once
    return Status(201, body)


@router.post(
    "/keys/{key_id}/revoke",
    response={200: ApiKeyOut, **ERRORS},
    summary="Revoke an API key",
)
async def api_key_revoke(request: HttpRequest, key_id: int, payload: ApiKeyRevokeIn) -> Any:
    """Refused from now on: in this process at once, in every other within about a second.
    Revoking a revoked key answers it as it is (and audits nothing new)."""
    principal = _admin(request)

    def revoke() -> dict[str, Any]:
        key, _ = access_services.api_key_revoke(
            key_id=key_id,
            actor=f"apikey:{principal.prefix}",
            reason=payload.reason,
            request_id=_request_id(request),
        )
        return selectors.api_key_out(key)

    body = await sync_to_async(revoke)()
    await sync_to_async(get_engine().config.reload)()
    return body
