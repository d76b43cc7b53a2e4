"""Small ASGI helpers shared by the lean apps (``agents.doors.openai`` for ``/v1/``,
``agents.doors.rest`` for ``POST /api/v1/agents/{name}/execute``).

Plain ASGI, no framework: these apps are the hot path and skip Django's request machinery.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from django.core.signals import setting_changed

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

T = TypeVar("T")


class Responder:
    """Sends one response; every response start also carries ``extra`` (the security headers
    of :func:`security_headers`, already encoded)."""

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        self._send = send
        self._extra = extra or []
        self.started = False

    async def start(self, status: int, headers: dict[str, str]) -> None:
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()] + self._extra,
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


# --- the security headers: what Django's middleware adds, on the lean doors too ----------------

# The middleware whose only work on a response is headers. Whichever of them settings.MIDDLEWARE
# lists is run once (per secure/insecure) on an empty response, and the headers it added are what
# the lean doors send: Django's own code decides, from Django's settings, so the doors and
# Django's routes cannot drift apart (tests/agents/doors/test_shell.py compares them).
SECURITY_HEADER_MIDDLEWARE = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
)
_security: dict[bool, list[tuple[bytes, bytes]]] = {}


def security_headers(secure: bool) -> list[tuple[bytes, bytes]]:
    """The security headers of a response to a request over HTTPS (``secure``) or not, encoded.
    Built on first use (and again after a settings change); a dict look-up afterwards."""
    found = _security.get(secure)
    if found is None:
        found = _security[secure] = _security_headers_from_django(secure)
    return found


def _security_headers_from_django(secure: bool) -> list[tuple[bytes, bytes]]:
    from django.conf import settings
    from django.http import HttpRequest, HttpResponse
    from django.utils.module_loading import import_string

    class Probe(HttpRequest):
        def _get_scheme(self) -> str:
            return "https" if secure else "http"

    request = Probe()
    request.method = "POST"
    request.path = request.path_info = "/api/v1/"
    response = HttpResponse(content_type="application/json")
    before = {name.lower() for name in response.headers}
    chain = [
        import_string(dotted)(lambda request: response)
        for dotted in settings.MIDDLEWARE
        if dotted in SECURITY_HEADER_MIDDLEWARE
    ]
    for middleware in chain:
        if hasattr(middleware, "process_request"):
            middleware.process_request(request)  # a redirect it may answer is Django's business
    for middleware in reversed(chain):  # responses go back up the chain
        response = middleware.process_response(request, response)
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in response.items()
        if name.lower() not in before
    ]


def _forget_security_headers(**kwargs: object) -> None:
    _security.clear()


setting_changed.connect(_forget_security_headers, dispatch_uid="bw-lean-security-headers")


def is_secure(scope: Scope) -> bool:
    """``HttpRequest.is_secure()`` for an ASGI scope, ``SECURE_PROXY_SSL_HEADER`` included
    (a repeated header counts by its first value, as Django's joined one does)."""
    from django.conf import settings

    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        meta_name, secure_value = proxy
        value = header(scope, meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        if value is not None:
            return value.split(",", 1)[0].strip() == secure_value
    return bool(scope.get("scheme") == "https")


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
