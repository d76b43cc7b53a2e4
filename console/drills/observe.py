"""What a drill reads back from the deployment, through the API only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from console.drills.client import ApiClient, DrillError


def epoch(stamp: str | None) -> float | None:
    """An API date-time (ISO 8601) as seconds since the epoch."""
    if not stamp:
        return None
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def deployment_breaker(api: ApiClient, deployment_id: int) -> dict[str, Any]:
    body = await api.ok("GET", "/api/v1/deployments")
    for item in body["items"]:
        if item["id"] == deployment_id:
            return dict(item["breaker"])
    raise DrillError(f"deployment {deployment_id} is not listed by GET /api/v1/deployments")


async def incidents(
    api: ApiClient, *, since: float, match: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Incidents opened at or after ``since`` (epoch) that ``match``, oldest first."""
    found = []
    for item in await api.pages("/api/v1/incidents", {"limit": 100}, most=300):
        opened = epoch(item["opened_at"]) or 0.0
        if opened < since - 1.0:  # newest first: the rest is older
            break
        if match(item):
            found.append(item)
    return sorted(found, key=lambda i: i["opened_at"])


def event_at(incident: dict[str, Any], kind: str) -> float | None:
    """When the incident's first ``kind`` event says it happened: the transition's own time
    (``data.at``) when it carries one, else the event's."""
    for event in incident.get("timeline", []):
        if event["kind"] == kind:
            at = (event.get("data") or {}).get("at")
            return float(at) if isinstance(at, int | float) else epoch(event["at"])
    return None


async def executions_recorded(
    api: ApiClient, agent: str, *, expected: int, wait_s: float = 15.0
) -> int:
    """How many executions of ``agent`` the server has stored; waits up to ``wait_s`` for
    ``expected`` (records reach the database through the journal, within a second or so)."""
    end = time.monotonic() + wait_s
    while True:
        items = await api.pages(
            "/api/v1/executions", {"agent": agent, "limit": 200}, most=expected + 200
        )
        count = sum(1 for i in items if i.get("status") not in ("queued", "running"))
        if count >= expected or time.monotonic() > end:
            return count
        await asyncio.sleep(0.5)


async def notifications(api: ApiClient, incident_ids: set[int]) -> dict[str, Any] | None:
    """The channels (``GET /api/v1/notifications``) and the deliveries about ``incident_ids``
    (``GET /api/v1/notifications/deliveries``), or None when this deployment has no
    notifications endpoint (404)."""
    status, body = await api.call("GET", "/api/v1/notifications")
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise DrillError(f"GET /api/v1/notifications: HTTP {status}")
    channels = [c for c in body.get("items", []) if c.get("enabled", True)]
    deliveries = []
    if channels and incident_ids:
        deliveries = [
            d
            for d in await api.pages("/api/v1/notifications/deliveries", {"limit": 200}, most=1000)
            if d.get("incident") in incident_ids
        ]
    return {"channels": len(channels), "deliveries": deliveries}


async def notifications_settled(
    api: ApiClient, incident_ids: set[int], *, wait_s: float = 15.0
) -> dict[str, Any] | None:
    """:func:`notifications`, once every delivery about ``incident_ids`` is final (sent or
    failed) or ``wait_s`` has passed: deliveries run in the background, with retries."""
    end = time.monotonic() + wait_s
    while True:
        found = await notifications(api, incident_ids)
        if found is None or not found["channels"] or not incident_ids:
            return found
        final = all(d.get("status") in ("sent", "failed") for d in found["deliveries"])
        if (found["deliveries"] and final) or time.monotonic() > end:
            return found
        await asyncio.sleep(1.0)


def notification_rows(report: Any, found: dict[str, Any] | None) -> None:
    """The notifications section of a drill's figures."""
    report.section("notifications")
    if found is None:
        report.add(
            "notifications", "notifications", None, "not configured (no /api/v1/notifications)"
        )
        return
    if not found["channels"]:
        report.add("notifications", "notifications", 0, "no channel configured")
        return
    sent = [d for d in found["deliveries"] if d.get("status") == "sent"]
    report.add(
        "notifications",
        "deliveries",
        len(found["deliveries"]),
        f"{len(found['deliveries'])} about these incidents over {found['channels']} "
        f"channel(s), {len(sent)} sent",
    )
    for d in found["deliveries"]:
        report.rows.append(
            (
                f"  {d.get('channel')}",
                f"{d.get('event')} of #{d.get('incident')}: {d.get('status')} after "
                f"{d.get('attempts')} attempt(s)",
            )
        )
