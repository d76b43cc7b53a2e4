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

from agents.access.credentials import presented_key  # noqa: E402
from agents.doors import openai as openai_compat  # noqa: E402
from agents.doors import rest as execute_asgi  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402

_django_http = ASGIStaticFilesHandler(django_asgi_app)
# Both lean doors hand Django what its middleware answers before any route (agents/doors/shell.py).
_openai = openai_compat.lean_app(fallback=_django_http)
_execute = execute_asgi.lean_app(fallback=_django_http)


async def http_app(scope: Any, receive: Any, send: Any) -> None:
    """The hot paths skip Django's request machinery: the OpenAI-compatible /v1/ and
    POST /api/v1/agents/{name}/execute, through one shell (agents/doors/shell.py);
    /static/ is answered before Django's middleware; everything else is Django."""
    path = scope["path"]
    if path.startswith("/v1/"):
        await _openai(scope, receive, send)
    elif scope["method"] == "POST" and execute_asgi.EXECUTE_PATH.fullmatch(path):
        await _execute(scope, receive, send)
    else:
        await _django_http(scope, receive, send)


# A socket that presents an API key is authenticated by that key alone (the consumers check it):
# no session middleware, so a console cookie sent along can never stand in for a bad key, and
# with no ambient credential in use a foreign Origin gains nothing (scripts and SDKs send none; a
# page must hold the key itself). Every other socket can only be a cookie (session) socket: it
# passes the origin check, which keeps other sites' pages from riding a console user's cookie.
_key_websockets = URLRouter(websocket_urlpatterns)
_browser_websockets = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
)


async def websocket_app(scope: Any, receive: Any, send: Any) -> None:
    """Key sockets to the key-only router, every other socket through the origin check and the
    session (``agents/access/credentials.py`` decides what presents a key)."""
    if presented_key(scope) is not None:
        await _key_websockets(scope, receive, send)
    else:
        await _browser_websockets(scope, receive, send)


application = ProtocolTypeRouter({"http": http_app, "websocket": websocket_app})
