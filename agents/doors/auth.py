"""Authentication at the doors: a bearer token (or ``?key=``) becomes a :class:`Principal`
against this process's engine, started on first use. The ninja routers use :class:`ApiKeyAuth`;
the lean ASGI doors and the websockets call :func:`authenticate`."""

from __future__ import annotations

from django.http import HttpRequest
from ninja.security import HttpBearer

from agents.access.auth import Principal, principal_for
from agents.engine import get_engine


async def authenticate(token: str) -> Principal | None:
    engine = get_engine()
    if not engine.started:
        await engine.start()
    return principal_for(token, keys=engine)


class ApiKeyAuth(HttpBearer):
    is_async = True  # ninja then awaits what __call__ returns (our coroutine)

    async def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        return await authenticate(token)
