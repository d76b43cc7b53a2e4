"""``POST /api/v1/agents/{name}/execute`` as a lean ASGI app: the REST API's hot path.

Django's request machinery and middleware cost about 3 ms of CPU per request on this machine
(docs/DECISIONS.md #1, #5), so ``console/asgi.py`` hands this one route straight here, as it hands
``/v1/`` to ``agents.doors.openai``. The key comes from the engine's in-memory snapshot (last
use is buffered), so the only I/O is the shared state and the provider call.

To a client it is the django-ninja route (``agents.api.agent_execute``), which stays: it
documents the endpoint in OpenAPI and answers whatever the shell hands back to Django. They
agree by construction rather than by copy:

* host, HTTPS, security headers, ``X-Request-ID``, the key and the body limit are the shell's
  (``agents.doors.shell``), which does them as Django and ninja do;
* the body is :class:`ExecuteIn`, the route's own schema; a body it refuses is worded as the
  route words it (:func:`parse_execute`: ninja parses with ``json.loads``, then validates);
* everything after parsing is :func:`agents.doors.execute.execute_now`, which the route calls too;
* every refusal is a ``core.errors.ApplicationError`` rendered in the API's one format
  (``{"error": {"type", "message"}}``, ``Retry-After`` on 503, ``WWW-Authenticate`` on 401),
  which the API's exception handlers (``console/api.py``) use too;
* the checks run in the route's order: key (401), body size (413), JSON (400), schema (422),
  then scope (403), agent (404), ``max_tokens`` cap (422) and ``Idempotency-Key`` (409/422).

tests/agents/doors/test_rest.py sends every kind of request to both and compares the answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any

from django.conf import settings
from ninja.responses import NinjaJSONEncoder
from pydantic import ValidationError

from agents.doors.execute import execute_now
from agents.doors.shell import (
    ASGIApp,
    BadBody,
    ClientGone,
    Receive,
    Request,
    Responder,
    Scope,
    Send,
    lean_door,
    parse,
    principal,
    read_body,
    until_done_or_disconnect,
)
from agents.runtime.state import DependencyUnavailable
from agents.schemas import ExecuteIn, ExecutionOut, validation_message
from core.errors import (
    ApplicationError,
    ServiceUnavailable,
    Unauthenticated,
    ValidationFailed,
    error_body,
)

logger = logging.getLogger("breakwater.api")

# The ninja route's path: ``{name}`` is Django's ``str`` converter, one non-empty segment.
EXECUTE_PATH = re.compile(r"/api/v1/agents/([^/]+)/execute")

# What ninja's JSON renderer labels its answers with.
JSON_TYPE = b"application/json; charset=utf-8"


def parse_execute(raw: bytes) -> ExecuteIn:
    """The body as the route parses it; refused as the route refuses it: 400 for a body that
    is not JSON, 422 naming each wrong field for one that breaks the schema.

    A body the schema takes straight from JSON is the route's too. Only a refused one takes
    the route's own steps, for its words: ninja reads the body with ``json.loads`` (which keeps
    lone surrogates, so the schema can name the field that holds one) and then validates."""
    try:
        return parse(ExecuteIn, raw)
    except BadBody:
        pass
    if not raw:
        raise ValidationFailed([validation_message([{"loc": (), "msg": "Field required"}])])
    try:
        data = json.loads(raw)
    except Exception as exc:  # whatever the parser raises, as ninja catches it
        message = "Cannot parse request body"
        if settings.DEBUG:
            message += f" ({exc})"
        raise ApplicationError(message) from None
    try:
        return ExecuteIn.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed([validation_message(exc.errors(include_url=False))]) from None


def render(exc: Exception) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """(status, body, headers) of a refusal in the REST API's format: what the API's exception
    handlers (``console/api.py``) answer for it."""
    if isinstance(exc, DependencyUnavailable):
        exc = ServiceUnavailable(str(exc), type=exc.kind)
    if not isinstance(exc, ApplicationError):
        logger.error("unhandled error in POST /api/v1/agents/{name}/execute", exc_info=exc)
        exc = ApplicationError(
            "internal error; it has been logged", status=500, type="internal_error"
        )
    headers = []
    if exc.retry_after is not None:
        headers.append((b"retry-after", str(exc.retry_after).encode()))
    if isinstance(exc, Unauthenticated):
        headers.append((b"www-authenticate", b"Bearer"))
    return exc.status, _json(error_body(exc.type, exc.message)), headers


def _json(data: Any) -> bytes:
    """As ninja's renderer writes it."""
    return json.dumps(data, cls=NinjaJSONEncoder).encode()


def _result_body(result: dict[str, object]) -> bytes:
    """The result as the route's response model serializes it."""
    return _json(ExecutionOut.model_validate(result).model_dump())


async def _execute(request: Request, receive: Receive, out: Responder) -> None:
    scope = request.scope
    match = EXECUTE_PATH.fullmatch(scope["path"])
    assert match is not None  # lean_app routes only this path here
    try:
        caller = await principal(request)
        raw = await read_body(request, receive)
        payload = parse_execute(raw)
        work = asyncio.ensure_future(
            execute_now(
                principal=caller,
                name=match.group(1),
                payload=payload,
                idempotency_key=request.header(b"idempotency-key"),
                method="POST",
                path=scope["path"],
                body=raw,
            )
        )
        result = await until_done_or_disconnect(work, receive)
        if result is None:
            return  # the client left: the execution was cancelled and settled
        answer = _result_body(result)
    except ClientGone:
        raise  # nobody to answer
    except Exception as exc:
        await out.json(*render(exc), content_type=JSON_TYPE)
        return
    await out.json(200, answer, content_type=JSON_TYPE)


def lean_app(fallback: ASGIApp) -> ASGIApp:
    """The ASGI app for ``POST`` to :data:`EXECUTE_PATH`; ``fallback`` (Django) answers every
    other request, and those Django answers before its routes."""
    door = lean_door(_execute, fallback=fallback, script_prefix=True)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST" or EXECUTE_PATH.fullmatch(scope["path"]) is None:
            await fallback(scope, receive, send)
        else:
            await door(scope, receive, send)

    return app
