"""ASGI entry point: HTTP through Django, websockets through Channels."""

from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402 - needs Django set up first
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from agents import execute_asgi, openai_compat  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402

_django_http = ASGIStaticFilesHandler(django_asgi_app)
_execute = execute_asgi.lean_app(fallback=_django_http)


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    """The hot paths skip Django's request machinery: the OpenAI-compatible /v1/ and
    POST /api/v1/agents/{name}/execute (which hands Django what its middleware would answer);
    /static/ is answered before Django's middleware; everything else is Django."""
    path = scope["path"]
    if path.startswith("/v1/"):
        await openai_compat.app(scope, receive, send)
    elif scope["method"] == "POST" and execute_asgi.EXECUTE_PATH.fullmatch(path):
        await _execute(scope, receive, send)
    else:
        await _django_http(scope, receive, send)


_websockets = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
_browser_websockets = AllowedHostsOriginValidator(_websockets)


def _bearer(scope: Any) -> bool:
    if b"key=" in scope.get("query_string", b""):
        return True
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


async def websocket_app(scope: Any, receive: Any, send: Any) -> None:
    """Origin checks protect cookie (session) sockets from cross-site use; a socket that
    authenticates with an API key carries no ambient credential, and scripts and SDKs send no
    Origin header, so it skips that check (the consumer still authenticates the key)."""
    if _bearer(scope):
        await _websockets(scope, receive, send)
    else:
        await _browser_websockets(scope, receive, send)


application = ProtocolTypeRouter({"http": http_app, "websocket": websocket_app})
