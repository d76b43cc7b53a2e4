"""The request id: one per HTTP request, on its answer as ``X-Request-ID`` and in the audit.

A client's (or its proxy's) ``X-Request-ID`` is kept when it is a sane one (at most 64
characters of ``A-Z a-z 0-9 . _ : -``, what the audit column holds and a log line can quote);
anything else is replaced by a fresh id, never echoed. Every door binds it for the code that
handles the request (the lean ASGI doors in ``agents.doors.shell``, Django's routes through
:class:`RequestIdMiddleware`), so :func:`core.audit.audit_record` stores it without each caller
passing it down. A context variable: each request runs in its own task (and ``sync_to_async``
copies the context into the thread), so concurrent requests never see each other's id.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

HEADER = "X-Request-ID"
MAX_LENGTH = 64  # core.models.AuditEvent.request_id
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


def current_request_id() -> str:
    """The id of the request being handled, or "" outside one (a job, a command, a socket)."""
    return _current.get()


# Not os.urandom (nor uuid4, which reads it): it releases the GIL for a system call, and on a
# loop shared with busy threads getting it back can take a thread switch interval. An id needs
# to be unique, not secret (it is sent to the client); 128 bits from a generator seeded from the
# OS (again in each forked child) do that in well under a microsecond.
_random = random.Random()
os.register_at_fork(after_in_child=_random.seed)  # or forked workers would repeat each other


def new_request_id() -> str:
    return f"{_random.getrandbits(128):032x}"


def request_id_from(inbound: str | None) -> str:
    """``inbound`` if it is a sane request id, else a new one."""
    if inbound is not None and _VALID.fullmatch(inbound):
        return inbound
    return new_request_id()


def bind(request_id: str) -> contextvars.Token[str]:
    """Make ``request_id`` current until :func:`unbind` with the token this returns."""
    return _current.set(request_id)


def unbind(token: contextvars.Token[str]) -> None:
    _current.reset(token)


class RequestIdMiddleware:
    """Django's side: binds the request's id while the rest of the stack (every middleware
    below, the view) runs, and puts it on the answer. First in ``MIDDLEWARE``, so that even
    the answers other middleware give on their own (a host outside ``ALLOWED_HOSTS``, the
    redirect to HTTPS) carry it. Sync and async, so Django adapts nothing around it."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self._acall(request)
        request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        token = _current.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response[HEADER] = request_id
        return response

    async def _acall(self, request: Any) -> Any:
        request_id = request_id_from(request.META.get("HTTP_X_REQUEST_ID"))
        token = _current.set(request_id)
        try:
            answer: Awaitable[Any] = self.get_response(request)
            response = await answer
        finally:
            _current.reset(token)
        response[HEADER] = request_id
        return response
