"""``POST /api/v1/agents/{name}/execute`` as a lean ASGI app: the REST API's hot path.

Django's request machinery and middleware cost about 3 ms of CPU per request on this machine
(docs/DECISIONS.md #1, #5), so ``console/asgi.py`` hands this one route straight here, as it hands
``/v1/`` to ``agents.doors.openai``. The key comes from the engine's in-memory snapshot (last
use is buffered), so the only I/O is the shared state and the provider call.

To a client it is the django-ninja route (``agents.api.agent_execute``), which stays: it
documents the endpoint in OpenAPI and answers whatever this app hands back to Django. They agree
by construction rather than by copy:

* the body is parsed and validated by the ninja operation's own body model, so unknown fields,
  types, limits and the messages are the route's, word for word;
* everything after parsing is :func:`agents.doors.execute.execute_now`, which the route calls too;
* every refusal is rendered by the API's own exception handlers (``console/api.py``): the same
  ``{"error": {"type", "message"}}`` body, status and headers (``WWW-Authenticate`` on 401);
* the checks run in the route's order: key (401), body size (413), JSON (400), schema (422),
  then scope (403), agent (404), ``max_tokens`` cap (422) and ``Idempotency-Key`` (409/422);
* what Django's middleware would add is added: the security headers (one source for both lean
  doors, ``agents.doors.shell.security_headers``, built by Django's own middleware) and
  ``Content-Length``.
  A request that middleware would answer itself (a host outside ``ALLOWED_HOSTS``, plain HTTP
  when HTTPS is required, a script prefix, a query string that is not UTF-8) goes to Django.

tests/agents/doors/test_rest.py sends every kind of request to both and compares the answers.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import re
import sys
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest
from django.http.request import split_domain_port, validate_host
from ninja.errors import AuthenticationError, ValidationErrorContext
from ninja.responses import NinjaJSONEncoder
from pydantic import ValidationError

from agents.access.auth import Principal
from agents.doors.auth import authenticate
from agents.doors.execute import execute_now
from agents.doors.shell import (
    Receive,
    Responder,
    Scope,
    Send,
    is_secure,
    read_body,
    security_headers,
    until_done_or_disconnect,
)
from agents.schemas import ExecuteIn, ExecutionOut
from console.api import api

# The ninja route's path: ``{name}`` is Django's ``str`` converter, one non-empty segment.
EXECUTE_PATH = re.compile(r"/api/v1/agents/([^/]+)/execute")
_ROUTE = "/agents/{name}/execute"


@functools.cache
def _body_model() -> Any:
    """The ninja operation's body model (``{"payload": ExecuteIn}``)."""
    from agents.api import router

    operation = next(op for op in router.path_operations[_ROUTE].operations if "POST" in op.methods)
    return next(m for m in operation.models if m.__ninja_param_source__ == "body")


class _Body:
    """All the ninja body model reads from a request: its bytes."""

    __slots__ = ("body",)

    def __init__(self, body: bytes) -> None:
        self.body = body


def parse_execute(raw: bytes) -> ExecuteIn:
    """The body as the route parses it; raises what the route raises (ninja's ``HttpError`` 400
    for a body that is not JSON, its ``ValidationError`` 422 for one that breaks the schema)."""
    model = _body_model()
    request = cast(HttpRequest, _Body(raw))
    try:
        values = model.resolve(request, api, {})
    except ValidationError as exc:
        raise api.validation_error_from_error_contexts(
            [ValidationErrorContext(exc, model)]
        ) from None
    return cast(ExecuteIn, values.payload)


def _headers(scope: Scope) -> dict[bytes, str]:
    """Request headers by name; repeated ones joined with commas, as Django joins them."""
    found: dict[bytes, str] = {}
    for name, value in scope.get("headers", ()):
        text = value.decode("latin-1")
        found[name] = f"{found[name]},{text}" if name in found else text
    return found


def _django_answers_itself(scope: Scope, headers: dict[bytes, str], secure: bool) -> bool:
    """Requests Django (or its middleware) answers before the route: leave them to it."""
    if scope.get("root_path") or settings.FORCE_SCRIPT_NAME or settings.USE_X_FORWARDED_HOST:
        return True
    if settings.SECURE_SSL_REDIRECT and not secure:
        return True  # SecurityMiddleware redirects to HTTPS
    query = scope.get("query_string", b"")
    if query:
        try:
            query.decode()
        except UnicodeDecodeError:
            return True  # Django answers 400
    host = headers.get(b"host")
    if host is None:
        return True  # Django rebuilds one from the server's name
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _ = split_domain_port(host)
    return not (domain and validate_host(domain, allowed))  # CommonMiddleware: 400


async def _answer(out: Responder, status: int, body: bytes, headers: dict[str, str]) -> None:
    # The security headers come with ``out`` (asgi_common.security_headers).
    await out.start(status, {**headers, "content-length": str(len(body))})
    await out.body(body)


_JSON = {"content-type": f"{api.renderer.media_type}; charset={api.renderer.charset}"}


def _result_body(result: dict[str, object]) -> bytes:
    """The result as the route's response model serializes it."""
    data = ExecutionOut.model_validate(result).model_dump()
    return json.dumps(data, cls=NinjaJSONEncoder).encode()


async def _refuse(out: Responder, scope: Scope, raw: bytes, exc: Exception) -> None:
    """Render ``exc`` with the API's exception handlers (``console/api.py``)."""
    response = api.on_exception(ASGIRequest(scope, io.BytesIO(raw)), exc)
    headers = {name.lower(): value for name, value in response.items()}
    await _answer(out, response.status_code, response.content, headers)


async def _authenticate(headers: dict[bytes, str]) -> Principal | None:
    """ninja's ``HttpBearer``: ``Authorization: Bearer <token>``, split on single spaces."""
    value = headers.get(b"authorization")
    if not value:
        return None
    parts = value.split(" ")
    if parts[0].lower() != "bearer":
        return None
    return await authenticate(" ".join(parts[1:]))


def lean_app(fallback: Any) -> Any:
    """The ASGI app for ``POST`` to :data:`EXECUTE_PATH`; ``fallback`` (Django) answers the
    requests Django's middleware would answer before the route."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        match = EXECUTE_PATH.fullmatch(scope["path"])
        if match is None or scope["method"] != "POST":
            await fallback(scope, receive, send)
            return
        headers = _headers(scope)
        secure = is_secure(scope)
        if _django_answers_itself(scope, headers, secure):
            await fallback(scope, receive, send)
            return
        out = Responder(send, security_headers(secure))
        await _execute(scope, receive, out, match.group(1), headers)

    return app


async def _execute(
    scope: Scope,
    receive: Receive,
    out: Responder,
    name: str,
    headers: dict[bytes, str],
) -> None:
    raw = b""
    try:
        principal = await _authenticate(headers)
        if principal is None:
            raise AuthenticationError
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        declared = int(headers.get(b"content-length") or 0)  # a bad value is a 500, as in Django
        if limit is not None and declared > limit:
            raise RequestDataTooBig("request body exceeds the size limit")
        try:
            body = await read_body(receive, sys.maxsize if limit is None else limit)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return  # the client left before sending its body
        if body is None:
            raise RequestDataTooBig("request body exceeds the size limit")
        raw = body
        payload = parse_execute(raw)
        work = asyncio.ensure_future(
            execute_now(
                principal=principal,
                name=name,
                payload=payload,
                idempotency_key=headers.get(b"idempotency-key"),
                method="POST",
                path=scope["path"],
                body=raw,
            )
        )
        result = await until_done_or_disconnect(work, receive)
        if result is None:
            return  # the client left: the execution was cancelled and settled
        answer = _result_body(result)
    except Exception as exc:  # rendered exactly as the route renders it
        await _refuse(out, scope, raw, exc)
        return
    await _answer(out, 200, answer, _JSON)
