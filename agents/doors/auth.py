"""Authentication at the doors: a bearer token (or ``?key=``, on the websockets) becomes a
:class:`Principal` against this process's engine, started on first use. The lean ASGI doors
(``agents.doors.shell``) and the ninja routers (:class:`ApiKeyAuth`) read the header with one
function, :func:`bearer_token`; the websockets read theirs with ``agents.access.credentials``."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja.security import HttpBearer

from agents.access.auth import Principal, principal_for
from agents.engine import get_engine


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization`` header (repeated ones joined with commas, as Django
    joins them), read as django-ninja's ``HttpBearer`` reads it, which the REST API has always
    answered by: the scheme case-insensitive, split on single spaces, nothing stripped (so
    ``"Bearer  bw_..."`` is the token ``" bw_..."``, which no key matches). None when the
    header is missing, empty or another scheme."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token


async def authenticate(token: str) -> Principal | None:
    engine = get_engine()
    if not engine.started:
        await engine.start()
    return principal_for(token, keys=engine)


class ApiKeyAuth(HttpBearer):
    is_async = True  # ninja then awaits what __call__ returns (our coroutine)

    def __call__(self, request: HttpRequest) -> Any:
        # The lean doors' reading of the header (ninja's own, minus its DEBUG log line, which
        # would write the header, key and all, to the log).
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return None
        return self.authenticate(request, token)

    async def authenticate(self, request: HttpRequest, token: str) -> Principal | None:
        return await authenticate(token)
