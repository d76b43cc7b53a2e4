"""``WS /ws/executions/{id}/``: one execution's status, tokens and result, live.

Who may watch: an API key (``?key=bw_...`` or an ``Authorization: Bearer`` header) that made
the execution or has ``read`` on its agent (the rule of ``GET /executions/{id}``), or, on a
socket that presents no key, a console user with a console role (Django session, from an
allowed origin: see ``console/asgi.py``; a signed-in user in no role group is refused, 4403, as
the console's pages refuse them). A socket that presents a key is the key's alone: a bad key is refused even
when a console session cookie comes with it. Anyone else is refused before the handshake
completes (close code 4401: no or bad credentials; 4404: no such execution, as far as you may
know).

Messages, all JSON with ``type`` and ``execution_id``:

* ``status`` ``{"status"}``: first the stored status, then ``running`` when a worker starts it;
* ``token`` ``{"text", "seq"}``: answer text as it streams (coalesced, in order);
* ``completed`` ``{"status", "result"}``: the stored execution, as ``GET /executions/{id}``
  returns it to the same key (provider error text summarized unless it has ``operate`` or
  ``admin``: ``agents.access.disclosure``); then the server closes (1000).

The consumer joins the execution's group before it reads the row, so a completion that lands
in between is seen in the row or arrives as a message (sent once either way). An execution that
is already finished gets ``status`` and ``completed`` at once.
"""

from __future__ import annotations

import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from agents.access.credentials import presented_key
from agents.access.disclosure import render_execution, sees_provider_text
from agents.executions.live import group_name

FINAL = frozenset({"succeeded", "degraded", "failed", "cancelled"})
UNAUTHENTICATED, NO_ROLE, NOT_FOUND = 4401, 4403, 4404
# The groups of console.roles.ROLES (the console sits above this layer; a test keeps them equal).
CONSOLE_ROLES = ("viewer", "operator", "admin")


def _console_role_names(user: Any) -> set[str]:
    """The signed-in ``user``'s console role groups (superusers are admins)."""
    if user.is_superuser:
        return {"admin"}
    return set(user.groups.filter(name__in=CONSOLE_ROLES).values_list("name", flat=True))


def _row(execution_id: str) -> Any:
    from agents.models import Execution

    return Execution.objects.filter(pk=uuid.UUID(execution_id)).first()


def _out(row: Any) -> dict[str, Any]:
    from agents.selectors import execution_out

    return execution_out(row)


class ExecutionConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    execution_id = ""
    joined = False
    done = False
    full_text = True  # provider error text in the result (operators/admins; operate/admin keys)

    async def connect(self) -> None:
        self.execution_id = str(self.scope["url_route"]["kwargs"]["execution_id"])
        row = await database_sync_to_async(_row)(self.execution_id)
        refusal = await self._refusal(row)
        if refusal is not None:
            await self.close(code=refusal)
            return
        await self.channel_layer.group_add(group_name(self.execution_id), self.channel_name)
        self.joined = True
        await self.accept()
        row = await database_sync_to_async(_row)(self.execution_id)  # after joining: see above
        await self._send("status", status=row.status)
        if row.status in FINAL:
            await self._complete(await database_sync_to_async(_out)(row))

    async def _refusal(self, row: Any) -> int | None:
        token = presented_key(self.scope)
        if token is None:  # no key: the console session, if any
            user = self.scope.get("user")
            if user is None or not user.is_authenticated or not user.is_active:
                return UNAUTHENTICATED
            roles = await database_sync_to_async(_console_role_names)(user)
            if not roles:
                return NO_ROLE
            # Like keys: provider error text for operators and admins, a summary for viewers.
            self.full_text = bool(roles & {"operator", "admin"})
            return None if row is not None else NOT_FOUND
        from agents.doors.auth import authenticate

        principal = await authenticate(token)
        if principal is None:
            return UNAUTHENTICATED
        self.full_text = sees_provider_text(principal.scopes)
        if row is None:
            return NOT_FOUND
        if row.api_key_id == principal.key_id:
            return None
        reads = bool({"read", "operate", "admin"} & principal.scopes)
        return None if reads and principal.may_use(row.agent_name) else NOT_FOUND

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(group_name(self.execution_id), self.channel_name)
            self.joined = False

    async def _send(self, kind: str, **fields: Any) -> None:
        await self.send_json({"type": kind, "execution_id": self.execution_id, **fields})

    async def _complete(self, result: dict[str, Any], seq: int | None = None) -> None:
        if self.done:
            return
        self.done = True
        result = render_execution(result, full=self.full_text)
        await self._send("completed", status=result["status"], result=result, seq=seq)
        await self.close(code=1000)

    # --- group messages (agents.executions.live) --------------------------------------------------

    async def execution_status(self, event: dict[str, Any]) -> None:
        if not self.done:
            await self._send("status", status=event["status"], seq=event.get("seq"))

    async def execution_token(self, event: dict[str, Any]) -> None:
        if not self.done:
            await self._send("token", text=event["text"], seq=event.get("seq"))

    async def execution_completed(self, event: dict[str, Any]) -> None:
        await self._complete(event["result"], event.get("seq"))
