"""Incidents with their timelines (docs/INTERFACES.md §4): list, declare, read, and change
(acknowledge, resolve, severity, comments, postmortem fields); and Alertmanager's webhook
(:mod:`incidents.alertmanager`).

Reading needs ``read``; writing needs ``operate`` (``admin`` implies both). Notification
channels and their delivery log need ``admin`` from a key not restricted to some agents (the log
names every agent's incidents). A key restricted to
some agents sees only the incidents of those agents (any other is 404); incidents about a shared
deployment concern every agent, so only unrestricted keys see them, and a restricted key may only
declare incidents about its own agents.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Query, Router, Status

from agents.access.auth import PermissionDenied, Principal
from agents.config.schema import NotificationSpec
from agents.doors.auth import ApiKeyAuth
from agents.schemas import ERRORS
from core.errors import NotFound
from incidents import selectors
from incidents.alertmanager import alertmanager_receive
from incidents.notifications import notification_channel_put, notification_test
from incidents.schemas import (
    AlertmanagerIn,
    AlertmanagerOut,
    IncidentIn,
    IncidentListOut,
    IncidentOut,
    IncidentPatchIn,
    IncidentQuery,
    NotificationChannelListOut,
    NotificationChannelOut,
    NotificationDeliveryListOut,
    NotificationDeliveryOut,
    NotificationDeliveryQuery,
)
from incidents.services import incident_change, incident_declare

router = Router(auth=ApiKeyAuth(), tags=["incidents"])


def _principal(request: HttpRequest) -> Principal:
    return request.auth  # type: ignore[attr-defined,no-any-return]


def _actor(principal: Principal) -> str:
    return f"apikey:{principal.prefix}"


# --- operations ------------------------------------------------------------------------------


@router.get("/incidents", response={200: IncidentListOut, **ERRORS}, summary="List incidents")
async def incident_list(request: HttpRequest, query: Query[IncidentQuery]) -> dict[str, Any]:
    """Newest first, each with its timeline; filter by ``status``, ``agent`` and ``kind`` (the
    incident class), pass ``next`` as ``after`` for the following page."""
    principal = _principal(request)
    principal.require("read")
    return await sync_to_async(selectors.incident_page)(
        allowed=principal.agents,
        status=query.status,
        agent=query.agent,
        kind=query.kind,
        after=query.after,
        limit=query.limit,
    )


async def _detail(incident_id: int, allowed: frozenset[str]) -> dict[str, Any]:
    incident = await sync_to_async(selectors.incident_detail)(
        incident_id=incident_id, allowed=allowed
    )
    if incident is None:
        raise NotFound(f"incident {incident_id} does not exist")
    return incident


@router.post("/incidents", response={201: IncidentOut, **ERRORS}, summary="Declare an incident")
async def incident_create(request: HttpRequest, payload: IncidentIn) -> Status:
    principal = _principal(request)
    principal.require("operate")
    incident_id = await sync_to_async(incident_declare)(
        title=payload.title,
        severity=payload.severity,
        agent=payload.agent,
        message=payload.message,
        allowed=principal.agents,
        actor=_actor(principal),
    )
    return Status(201, await _detail(incident_id, principal.agents))


@router.get(
    "/incidents/{incident_id}", response={200: IncidentOut, **ERRORS}, summary="Get an incident"
)
async def incident_get(request: HttpRequest, incident_id: int) -> dict[str, Any]:
    principal = _principal(request)
    principal.require("read")
    return await _detail(incident_id, principal.agents)


@router.patch(
    "/incidents/{incident_id}",
    response={200: IncidentOut, **ERRORS},
    summary="Acknowledge, resolve or annotate an incident",
)
async def incident_update(
    request: HttpRequest, incident_id: int, payload: IncidentPatchIn
) -> dict[str, Any]:
    """``status`` acknowledged (records who) or resolved; ``severity``; a ``comment``; the
    postmortem fields ``impact``, ``root_cause``, ``resolution``, ``lessons``."""
    principal = _principal(request)
    principal.require("operate")
    await sync_to_async(incident_change)(
        incident_id=incident_id,
        changes=payload.model_dump(exclude_unset=True),
        allowed=principal.agents,
        actor=_actor(principal),
    )
    return await _detail(incident_id, principal.agents)


# --- notifications ---------------------------------------------------------------------------


def _notifications_admin(request: HttpRequest) -> Principal:
    principal = _principal(request)
    principal.require("admin")
    if principal.agents:
        raise PermissionDenied("a key restricted to some agents cannot manage notifications")
    return principal


def _channel(name: str) -> dict[str, Any]:
    found = selectors.notification_channels(name)
    if not found:
        raise NotFound(f"notification channel {name!r} does not exist")
    return selectors.channel_out(found[0])


@router.get(
    "/notifications",
    response={200: NotificationChannelListOut, **ERRORS},
    summary="List notification channels",
    tags=["notifications"],
)
async def notification_list(request: HttpRequest) -> dict[str, Any]:
    """Every channel (secrets by variable name only) with its newest deliveries and their
    attempts; the whole log is ``GET /notifications/deliveries``."""
    _notifications_admin(request)

    def read() -> list[dict[str, Any]]:
        return [selectors.channel_out(c) for c in selectors.notification_channels()]

    return {"items": await sync_to_async(read)(), "next": None}


@router.post(
    "/notifications",
    response={200: NotificationChannelOut, 201: NotificationChannelOut, **ERRORS},
    summary="Create or update a notification channel",
    tags=["notifications"],
)
async def notification_put(request: HttpRequest, payload: NotificationSpec) -> Status:
    """The channel named ``name`` is created (201) or made to match the body (200): the same
    fields as the config file's ``notifications:`` entries. Audited."""
    principal = _notifications_admin(request)

    def put() -> tuple[dict[str, Any], bool]:
        channel, created = notification_channel_put(spec=payload, actor=_actor(principal))
        return _channel(channel.name), created

    body, created = await sync_to_async(put)()
    return Status(201 if created else 200, body)


@router.get(
    "/notifications/deliveries",
    response={200: NotificationDeliveryListOut, **ERRORS},
    summary="The notification delivery log",
    tags=["notifications"],
)
async def notification_deliveries(
    request: HttpRequest, query: Query[NotificationDeliveryQuery]
) -> dict[str, Any]:
    """Newest first, each with every attempt (status code, error); filter by ``channel``."""
    _notifications_admin(request)

    def read() -> dict[str, Any]:
        page, cursor = selectors.delivery_page(
            channel=query.channel, after=query.after, limit=query.limit
        )
        return {"items": [selectors.delivery_out(d) for d in page], "next": cursor}

    return await sync_to_async(read)()


@router.post(
    "/notifications/{name}/test",
    response={202: NotificationDeliveryOut, **ERRORS},
    summary="Send a test notification",
    tags=["notifications"],
)
async def notification_send_test(request: HttpRequest, name: str) -> Status:
    """Queue a test message to the channel (enabled or not); 202 with its delivery, whose
    attempts the log then shows. Audited."""
    principal = _notifications_admin(request)

    def send() -> dict[str, Any]:
        delivery = notification_test(name=name, actor=_actor(principal))
        page, _ = selectors.delivery_page(channel=name, limit=1)
        return selectors.delivery_out(page[0] if page else delivery)

    return Status(202, await sync_to_async(send)())


@router.post(
    "/alerts/alertmanager",
    response={200: AlertmanagerOut, **ERRORS},
    summary="Receive Alertmanager's webhook",
)
async def alertmanager_webhook(request: HttpRequest, payload: AlertmanagerIn) -> dict[str, Any]:
    """Alertmanager's webhook notification (version 4) as it sends it: each firing alert opens
    (or updates) an ``alert`` incident keyed ``alertmanager:<alertname>:<fingerprint>``, each
    resolved one resolves it; repeats change nothing. Point a ``webhook_configs`` entry here
    with ``http_config.authorization.credentials`` set to an ``operate`` key. A key restricted
    to some agents may only send alerts whose ``labels.agent`` is one of them (else 403)."""
    principal = _principal(request)
    principal.require("operate")
    return await sync_to_async(alertmanager_receive)(
        payload=payload, allowed=principal.agents, actor=_actor(principal)
    )
