"""``WS /ws/dashboard/``: live stats of every agent the viewer may see, every second.

Who may watch: an API key with ``read`` (``operate`` and ``admin`` imply it), sent as
``?key=bw_...`` or an ``Authorization: Bearer`` header, or, on a socket that presents no key, a
console user (Django session; the origin check of ``console/asgi.py`` applies). A socket that
presents a key is the key's alone: a bad key is refused even with a session cookie. A console
user needs a console role (``console/roles.py``; any role may watch). A key restricted to some agents sees only those agents, their
incidents and budgets (not the global budget nor deployment-wide incidents). Refused before the
handshake completes: 4401 (no or bad credentials), 4403 (a key without ``read``, a user without a console role). A key is
checked again before every message, so a revoked or expired key, or one that lost ``read``, is
closed with the same codes within a second; a changed allow-list applies from the next message.

The server sends one ``snapshot`` message per tick (about every second; the first at once or
within a tick of connecting); clients send nothing. The message format is in
docs/OPERATIONS.md ("Live dashboard"); the ticker that computes it is :mod:`console.dashboard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from agents.access.auth import PermissionDenied, Principal
from agents.access.credentials import presented_key
from agents.doors.auth import authenticate
from console.dashboard import DashboardTicker, Subscription, Visible, dashboard_ticker
from console.roles import role_of

log = logging.getLogger("breakwater.dashboard")

UNAUTHENTICATED, FORBIDDEN = 4401, 4403


def _reads(principal: Principal) -> bool:
    try:
        principal.require("read")
    except PermissionDenied:
        return False
    return True


class DashboardConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    token: str | None = None  # the API key, re-checked before every message (None: session)
    visible: Visible = None
    ticker: DashboardTicker | None = None
    subscription: Subscription | None = None
    sender: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        refusal = await self._authorize()
        if refusal is not None:
            await self.close(code=refusal)
            return
        await self.accept()
        self.ticker = dashboard_ticker()
        self.subscription = self.ticker.subscribe()
        self.sender = asyncio.get_running_loop().create_task(
            self._send_loop(self.subscription), name="bw-dashboard-socket"
        )

    async def _authorize(self) -> int | None:
        """None when the viewer may watch (setting what it may see), else the close code."""
        token = self.token if self.token is not None else presented_key(self.scope)
        if token is None:  # no key: the console session, if any
            user = self.scope.get("user")
            if user is None or not user.is_authenticated or not user.is_active:
                return UNAUTHENTICATED
            if await database_sync_to_async(role_of)(user) is None:
                return FORBIDDEN
            self.visible = None
            return None
        principal = await authenticate(token)
        if principal is None:
            return UNAUTHENTICATED
        if not _reads(principal):
            return FORBIDDEN
        self.token = token
        self.visible = principal.agents or None
        return None

    async def _send_loop(self, subscription: Subscription) -> None:
        try:
            while True:
                snapshot = await subscription.next()
                if self.token is not None:
                    refusal = await self._authorize()
                    if refusal is not None:
                        await self.close(code=refusal)
                        return
                await self.send(text_data=snapshot.render(self.visible))
        except asyncio.CancelledError:
            raise
        except Exception:  # the socket went away under us: disconnect() cleans up
            log.debug("dashboard socket send failed", exc_info=True)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        return None  # nothing to say to the server; ignored

    async def disconnect(self, code: int) -> None:
        sender, self.sender = self.sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        subscription, self.subscription = self.subscription, None
        if subscription is not None and self.ticker is not None:
            await self.ticker.unsubscribe(subscription)
