"""Small ASGI helpers shared by the lean apps (``agents.openai_compat`` for ``/v1/``,
``agents.execute_asgi`` for ``POST /api/v1/agents/{name}/execute``).

Plain ASGI, no framework: these apps are the hot path and skip Django's request machinery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

T = TypeVar("T")


class Responder:
    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def start(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        """A whole JSON response, with its length (not chunked)."""
        await self.start(
            status,
            {
                "content-type": "application/json",
                "content-length": str(len(data)),
                **(headers or {}),
            },
        )
        await self.body(data)


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if it exceeds ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def until_done_or_disconnect(task: asyncio.Future[T], receive: Receive) -> T | None:
    """Wait for ``task``; cancel it if the client disconnects first (then None).

    Cancelling the caller cancels ``task`` too; either way this returns (or raises) only once
    ``task`` has finished, so its clean-up (settling, journaling) is done by then."""
    disconnect = asyncio.ensure_future(wait_disconnect(receive))
    disconnect.add_done_callback(lambda _: task.cancel())  # a no-op once the task is done
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if task.cancelled() and disconnect.done() and not (current and current.cancelling()):
            return None  # the client left: the work was stopped
        raise
    finally:
        disconnect.cancel()


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
