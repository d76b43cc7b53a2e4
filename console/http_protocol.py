"""uvicorn's httptools protocol with read deadlines: slow clients do not hold the server.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``). A connection that
sends part of its headers and then stalls, or announces a body and trickles it a byte at a time,
is held for as long as the client likes: a few hundred of them (slowloris) pin a process's
sockets and requests. This subclass adds two deadlines, per request, on every route alike (the
lean ``/v1`` and execute doors, Django's routes, websocket handshakes):

* headers: the request line and headers must be complete within ``header_timeout_s`` of the
  connection opening, or of the request's first byte on a kept-alive connection;
* body: the whole body must arrive within ``body_timeout_s`` of the headers. A total deadline,
  not an idle one: a byte every few seconds would reset an idle timer forever. It runs whether
  or not the application reads the body (an early 401 leaves the body coming in, and a
  trickling body would otherwise keep the connection after the answer).

Past a deadline the connection is closed, with ``408 Request Timeout`` when no response has
started (what the application then sends is dropped; it sees ``http.disconnect``, as when a
client leaves). Per request this costs two clock reads and a few attribute writes (one timer per
connection, re-armed lazily; docs/BENCHMARKS.md).

On a graceful stop (SIGTERM, a supervised worker's recycle) uvicorn closes every idle
connection at once, including one it accepted a moment ago whose request is still on the wire:
that client sees a reset for a request it had every reason to think was sent. Here an idle
connection gets ``SHUTDOWN_GRACE_S`` more: a request that arrives meanwhile is answered (with
``Connection: close``), and the connection closes once it is idle again or the grace is over.

The connection cap is uvicorn's own ``limit_concurrency`` (503 past it; see ``serve``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("breakwater.serve")

SHUTDOWN_GRACE_S = 1.0  # an idle connection's last chance to deliver a request on a graceful stop

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 16\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request Timeout\n"
)


class DeadlineHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring; :func:`protocol_with_deadlines` sets the two timeouts."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One lazily re-armed timer per connection: a request moves ``_due`` (two attribute
        # writes and a clock read) rather than creating and cancelling timer handles (~2.5 us
        # each on uvloop). When the timer fires it re-arms for a later ``_due``, or stops.
        self._due: float | None = None
        self._what = "headers"
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False

    def _arm(self, seconds: float, what: str) -> None:
        self._due = self.loop.time() + seconds
        self._what = what
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._check)

    def _disarm(self) -> None:
        self._due = None

    def _check(self) -> None:
        self._timer = None
        due = self._due
        if due is None:
            return
        if self.loop.time() < due:
            self._timer = self.loop.call_at(due, self._check)
            return
        self._due = None
        self._expired(self._what)

    def _expired(self, what: str) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle  # for "headers": the previous request's, if any
        if what == "body":
            assert cycle is not None
            if not cycle.response_started:
                # The application is waiting for the body: it gets http.disconnect, and
                # anything it still sends is dropped (the 408 is the answer).
                cycle.disconnected = True
                cycle.message_event.set()
                self.transport.write(_TIMEOUT_RESPONSE)
        elif cycle is None or cycle.response_complete:
            # Not in the middle of another response (a pipelined request's headers stalled).
            self.transport.write(_TIMEOUT_RESPONSE)
        log.debug("closing %s: request %s not received in time", self.client, what)
        self.transport.close()

    # --- the deadlines around uvicorn's parser callbacks --------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._due is None:  # a new request on a kept-alive connection
            self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if self._stopping and self.cycle is not None:  # came in the grace: answered, closed
            self.cycle.keep_alive = False
        if self.parser.should_upgrade() and self._should_upgrade():
            return  # a websocket handshake: no body; the websocket protocol takes over
        if not self.pipeline:
            # Pipelined requests wait (reading paused) until the ones before them are
            # answered: their body deadline starts when they do (on_response_complete).
            self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        waiting = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        if waiting is not None and waiting.more_body and not self.transport.is_closing():
            self._arm(self.body_timeout_s, "body")

    # --- graceful stop -------------------------------------------------------------------------

    def shutdown(self) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # mid-request: uvicorn's way, closed after the answer
            return
        if self._stopping or self.transport.is_closing():
            return
        self._stopping = True
        self._unset_keepalive_if_required()
        self.loop.call_later(SHUTDOWN_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        # A request that came in the grace closes the connection itself once answered.
        if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
            self.transport.close()


def protocol_with_deadlines(
    *, header_timeout_s: float, body_timeout_s: float
) -> type[DeadlineHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these deadlines."""
    return type(
        "DeadlineHttpToolsProtocol",
        (DeadlineHttpToolsProtocol,),
        {"header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s},
    )
