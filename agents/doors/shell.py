"""The one ASGI shell of the lean doors (``agents.doors.openai`` for ``/v1/``, ``agents.doors.rest``
for ``POST /api/v1/agents/{name}/execute``): what every request goes through before a door's
own work, done once, here, the way Django does it for its routes (the third door, the ninja
route, is Django's).

Plain ASGI, no framework: these doors are the hot path and skip Django's request machinery
(about 3 ms of CPU per request; docs/DECISIONS.md #1, #5). What the shell does for them:

* Requests Django answers before any route (a host outside ``ALLOWED_HOSTS``: 400; plain HTTP
  under ``SECURE_SSL_REDIRECT``: the redirect; a query string that is not UTF-8; no ``Host``)
  are handed to Django, which answers them as it answers them on every route: the check uses
  Django's own ``validate_host``, the answer is Django's (:func:`django_answers_itself`).
* Every answer carries the security headers Django's middleware puts on its routes' answers,
  built by that middleware (:func:`security_headers`), and ``X-Request-ID``: the client's when
  it is a sane one, else a new one, bound for the request's code (``core.request_id``, which
  the audit reads).
* The API key: ``Authorization: Bearer`` read as the ninja routes read it
  (``agents.doors.auth.bearer_token``), then :func:`agents.doors.auth.authenticate`
  (:func:`principal`); no usable key is :class:`core.errors.Unauthenticated`.
* The body: at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes, as Django bounds its routes' bodies
  (:func:`read_body`: a declared length over it is refused before reading, a chunked one as
  soon as it passes it): :class:`core.errors.BodyTooLarge`. Its read deadline is the server's
  (``console/http_protocol.py``: one timer per connection for every route alike, Django's
  too); past it the client is gone (:class:`ClientGone`), and so is the request.
* Bodies are parsed and validated with the door's pydantic schema in one call
  (:func:`parse`): :class:`BadBody` holds pydantic's errors for the door to word.

Refusals are exceptions (``core.errors``, ``agents.doors.execute``); each door renders them in
its own format: the REST API's ``{"error": {"type", "message"}}``, OpenAI's ``{"error":
{"message", "type", "param", "code"}}``. tests/agents/doors/test_shell.py sends the same
requests to the three doors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from django.conf import settings
from django.core.signals import setting_changed
from django.http.request import split_domain_port, validate_host
from pydantic import BaseModel, ValidationError

from agents.access.auth import Principal
from agents.doors.auth import authenticate, bearer_token
from core.errors import BodyTooLarge, Unauthenticated
from core.request_id import bind, request_id_from, unbind

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]  # Django's handlers type theirs their own way
Headers = Iterable[tuple[bytes, bytes]]

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


class ClientGone(Exception):
    """The client disconnected (or the server's read deadline cut it off) before its request
    was read: nothing is answered."""


class BadBody(Exception):
    """The body is not JSON, or breaks the door's schema: pydantic's ``errors`` (without
    input values or URLs), worded by the door."""

    def __init__(self, errors: list[Any], raw: bytes) -> None:
        super().__init__("bad request body")
        self.errors = errors
        self.raw = raw


class Request:
    """What the shell read from an ASGI request, once: its headers by name (lower-case bytes;
    repeated ones joined with commas, as Django joins them), whether it came over HTTPS, and
    its request id."""

    __slots__ = ("headers", "request_id", "scope", "secure")

    def __init__(
        self, scope: Scope, headers: dict[bytes, bytes], secure: bool, request_id: str
    ) -> None:
        self.scope = scope
        self.headers = headers
        self.secure = secure
        self.request_id = request_id

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


class Responder:
    """Sends one response; every response start also carries ``extra`` (the security headers
    and ``X-Request-ID``, already encoded)."""

    __slots__ = ("_extra", "_send", "started")

    def __init__(self, send: Send, extra: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._extra = extra
        self.started = False

    async def start(self, status: int, headers: Headers = ()) -> None:
        self.started = True
        await self._send(
            {"type": "http.response.start", "status": status, "headers": [*headers, *self._extra]}
        )

    async def body(self, data: bytes, *, more: bool = False) -> None:
        await self._send({"type": "http.response.body", "body": data, "more_body": more})

    async def json(
        self,
        status: int,
        data: bytes,
        headers: Headers = (),
        *,
        content_type: bytes = b"application/json",
    ) -> None:
        """A whole JSON response, with its length (not chunked)."""
        self.started = True
        await self._send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", b"%d" % len(data)),
                    *headers,
                    *self._extra,
                ],
            }
        )
        await self._send({"type": "http.response.body", "body": data, "more_body": False})


Handler = Callable[[Request, Receive, Responder], Awaitable[None]]


def lean_door(handle: Handler, *, fallback: ASGIApp, script_prefix: bool = False) -> ASGIApp:
    """The ASGI app of a door: the shell around ``handle``. ``fallback`` (Django) answers what
    Django answers before any route; ``script_prefix``: also requests under a script prefix
    (``root_path``, ``FORCE_SCRIPT_NAME``), for a door whose route Django also serves, where
    the prefix changes the path the route sees."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = read_headers(scope)
        secure = is_secure(scope, headers)
        if django_answers_itself(scope, headers, secure, script_prefix=script_prefix):
            await fallback(scope, receive, send)
            return
        inbound = headers.get(b"x-request-id")
        request_id = request_id_from(None if inbound is None else inbound.decode("latin-1"))
        out = Responder(send, [*security_headers(secure), (b"x-request-id", request_id.encode())])
        token = bind(request_id)
        try:
            await handle(Request(scope, headers, secure, request_id), receive, out)
        except ClientGone:
            pass  # nobody to answer
        finally:
            unbind(token)

    return app


def read_headers(scope: Scope) -> dict[bytes, bytes]:
    found: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        known = found.get(name)
        found[name] = value if known is None else known + b"," + value
    return found


# --- what Django answers before any route ------------------------------------------------------


class _Settings:
    """The settings the shell reads on every request, read once per process (and again after
    a settings change: ``setting_changed``, which tests and ``override_settings`` send; nothing
    changes settings in a serving process). A Django setting costs about a microsecond a read
    (``LazySettings``), the host check ten (``split_domain_port``, ``validate_host``): this
    keeps the shell's own cost to a few microseconds a request."""

    def __init__(self) -> None:
        self.hands_over = bool(settings.USE_X_FORWARDED_HOST)  # the host is another header's
        self.script_name = bool(settings.FORCE_SCRIPT_NAME)
        self.ssl_redirect = bool(settings.SECURE_SSL_REDIRECT)
        proxy = settings.SECURE_PROXY_SSL_HEADER
        self.proxy_header: bytes | None = None
        self.proxy_value = ""
        if proxy:
            meta_name, self.proxy_value = proxy
            self.proxy_header = meta_name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        allowed = list(settings.ALLOWED_HOSTS)
        if settings.DEBUG and not allowed:
            allowed = [".localhost", "127.0.0.1", "[::1]"]  # as HttpRequest.get_host()
        self.allowed_hosts = allowed
        self.body_limit: int | None = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        # Host header -> allowed. Bounded: the header is the client's to choose.
        self.hosts: dict[bytes, bool] = {}


_settings: list[_Settings] = []


def _read_settings() -> _Settings:
    if not _settings:
        _settings.append(_Settings())
    return _settings[0]


def django_answers_itself(
    scope: Scope, headers: dict[bytes, bytes], secure: bool, *, script_prefix: bool = False
) -> bool:
    """Whether Django (or its middleware) answers this request before any route: then it is
    Django's to answer, byte for byte as on its own routes."""
    known = _read_settings()
    if known.hands_over:
        return True  # USE_X_FORWARDED_HOST: Django's reading of the host decides
    if script_prefix and (known.script_name or scope.get("root_path")):
        return True
    if known.ssl_redirect and not secure:
        return True  # SecurityMiddleware redirects to HTTPS (or exempts the path)
    query = scope.get("query_string", b"")
    if query:
        try:
            query.decode()
        except UnicodeDecodeError:
            return True  # Django answers 400
    host = headers.get(b"host")
    if host is None:
        return True  # Django rebuilds one from the server's name
    allowed = known.hosts.get(host)
    if allowed is None:
        allowed = host_allowed(host.decode("latin-1"), known.allowed_hosts)
        if len(known.hosts) < 64:
            known.hosts[host] = allowed
    return not allowed


def host_allowed(host: str, allowed_hosts: list[str]) -> bool:
    """``HttpRequest.get_host()``'s check, with Django's own helpers (CommonMiddleware
    answers 400 when it fails)."""
    domain, _ = split_domain_port(host)
    return bool(domain and validate_host(domain, allowed_hosts))


def is_secure(scope: Scope, headers: dict[bytes, bytes]) -> bool:
    """``HttpRequest.is_secure()``, ``SECURE_PROXY_SSL_HEADER`` included (the first of the
    header's comma-separated values counts, as in Django)."""
    known = _read_settings()
    if known.proxy_header is not None:
        value = headers.get(known.proxy_header)
        if value is not None:
            return value.split(b",", 1)[0].strip().decode("latin-1") == known.proxy_value
    return bool(scope.get("scheme") == "https")


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


def _forget_settings(**kwargs: object) -> None:
    _security.clear()
    _settings.clear()


setting_changed.connect(_forget_settings, dispatch_uid="bw-lean-security-headers")


# --- the key and the body ------------------------------------------------------------------------


async def principal(request: Request) -> Principal:
    """The principal of the request's API key; :class:`Unauthenticated` without a usable one."""
    token = bearer_token(request.header(b"authorization"))
    found = None if token is None else await authenticate(token)
    if found is None:
        raise Unauthenticated
    return found


async def read_body(request: Request, receive: Receive) -> bytes:
    """The request body, within ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (None: no limit, as in Django).
    A ``Content-Length`` that is not a number raises ``ValueError``, as in Django (a 500; no
    server in front passes one on)."""
    limit = _read_settings().body_limit
    declared = request.headers.get(b"content-length")
    if limit is not None and declared and int(declared) > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge
        if not message.get("more_body", False):
            if not chunks:
                return chunk  # the usual case: the whole body in one message
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


def parse(schema: type[M], raw: bytes) -> M:
    """``raw`` validated as ``schema`` (JSON straight to the model); :class:`BadBody` if it is
    not JSON or breaks the schema."""
    try:
        return schema.model_validate_json(raw)
    except ValidationError as exc:
        raise BadBody(exc.errors(include_url=False, include_input=False), raw) from None


# --- waiting for the work -----------------------------------------------------------------------


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
