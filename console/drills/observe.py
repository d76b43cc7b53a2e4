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
    """Channels and the deliveries about ``incident_ids`` from ``GET /api/v1/notifications``,
    or None when this deployment has no notifications endpoint (404)."""
    status, body = await api.call("GET", "/api/v1/notifications")
    if status == 404:
        return None
    if status != 200 or not isinstance(body, dict):
        raise DrillError(f"GET /api/v1/notifications: HTTP {status}")
    channels = body.get("items") or body.get("channels") or []
    deliveries = body.get("deliveries") or []
    for channel in channels:
        deliveries.extend(channel.get("deliveries") or [])
    ours = [
        d
        for d in deliveries
        if isinstance(d, dict)
        and (d.get("incident") in incident_ids or d.get("incident_id") in incident_ids)
    ]
    return {"channels": len(channels), "deliveries": ours}
