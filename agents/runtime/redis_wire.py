"""A lean asyncio Redis client for the hot path: one pipelined connection per event loop.

redis-py's asyncio client costs 115-135 µs of CPU per command on our machines (a pool checkout,
a lock, a parser per connection; redis/redis-py#3412), more than everything else the executor
does for an execution. The hot path needs only a handful of commands (``EVALSHA``/``EVAL`` of
the state scripts, ``XADD`` of the journal, ``GET``/``SET`` of the response cache), so this is
that subset done directly: commands packed by ``hiredis.pack_command``, replies parsed by
``hiredis.Reader``, over an ``asyncio.Protocol`` (docs/BENCHMARKS.md, "Runtime overhead").

* **Auto-pipelining.** Commands issued in the same turn of the event loop leave in one write:
  the executor's journal write and its state call (sent concurrently) cost one round trip.
  Replies come back in order and are matched to callers first in, first out.
* **Failures are loud and never replayed.** A connection that breaks fails every command in
  flight with :class:`redis.exceptions.ConnectionError`; the next command opens a new
  connection. A command is never re-sent by the client: an ``admit`` that may have run must not
  run twice. ``NOSCRIPT`` comes back as :class:`redis.exceptions.NoScriptError` and other error
  replies as :class:`redis.exceptions.ResponseError`, as with redis-py, so callers handle both
  clients alike.
* **Timeouts per connection, not per call.** A command unanswered after ``command_timeout_s``
  means the connection is stuck: it is aborted and everything in flight fails with
  :class:`redis.exceptions.TimeoutError`. One timer per connection, re-armed for the oldest
  command, instead of a timer per call.
* **URLs as redis-py reads them** (``redis://``, ``rediss://``, ``unix://``; user, password and
  database from the URL; ``ssl_cert_reqs=none`` to skip certificate checks).

Everything else (the drainer, sessions, idempotency, operator calls) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, Protocol, cast

import hiredis
from redis.connection import SSLConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Reply = Any


class RedisCommands(Protocol):
    """What the hot-path Redis adapters (state, journal, cache) need of a client: redis-py's
    ``Redis`` and :class:`RedisWire` both have it."""

    async def execute_command(self, *args: Any) -> Any: ...


def _error(reply: hiredis.ReplyError) -> ResponseError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message[len("NOSCRIPT ") :])
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, command_timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = command_timeout_s
        self._reader = hiredis.Reader()
        self._pending: deque[asyncio.Future[Reply]] = deque()
        self._deadlines: deque[float] = deque()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self._failure: Exception | None = None
        self._overdue: asyncio.Future[Reply] | None = None  # found late once: see _check
        self.closed = False

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending, deadlines = self._pending, self._deadlines
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._abort(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self._abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            future = pending.popleft()
            deadlines.popleft()
            if future.done():  # its caller was cancelled: the reply is dropped, order is kept
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(_error(reply))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        failure = self._failure or RedisConnectionError(
            f"Redis connection lost{f': {exc}' if exc else ''}"
        )
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(failure)
        self._deadlines.clear()
        self._out.clear()

    # --- commands ---

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Reply]:
        if self.closed:
            raise self._failure or RedisConnectionError("Redis connection is closed")
        packed = hiredis.pack_command(args)  # first: an argument it refuses must change nothing
        future: asyncio.Future[Reply] = self._loop.create_future()
        now = self._loop.time()
        if not self._pending:
            self._arm(now + self._timeout_s)
        self._pending.append(future)
        self._deadlines.append(now + self._timeout_s)
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self._transport is None or not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        self._transport.write(data)

    def _arm(self, at: float) -> None:
        if self._timer is None:
            self._timer = self._loop.call_at(at, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._deadlines or self.closed:
            return
        oldest = self._deadlines[0]
        if self._loop.time() < oldest:
            self._arm(oldest)
            return
        if self._overdue is not self._pending[0]:
            # Overdue on this check: look once more a millisecond later, after the loop has
            # polled the socket. A loop that was itself blocked (a long GC, a busy machine) runs
            # its timers before it reads (uvloop does), and the reply may be waiting there.
            self._overdue = self._pending[0]
            self._arm(self._loop.time() + 0.001)
            return
        self._abort(RedisTimeoutError(f"Redis did not answer within {self._timeout_s:g} s"))

    def _abort(self, failure: Exception) -> None:
        if self._failure is None:
            self._failure = failure
        if self._transport is not None:
            self._transport.abort()  # connection_lost fails what is in flight
        else:
            self.connection_lost(None)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class RedisWire:
    """The hot-path client of one event loop (create it inside the loop that will use it).

    ``await wire.execute_command("EVALSHA", sha, 0, *args)`` is the whole interface, the same
    name and calling convention as redis-py's, so the hot-path adapters take either client.
    """

    connection_class: type[_Connection] = _Connection  # (a benchmark counts through a subclass)

    def __init__(
        self,
        url: str,
        *,
        connect_timeout_s: float = 2.0,
        command_timeout_s: float = 5.0,
        client_name: str | None = "breakwater-hot",
    ) -> None:
        options = parse_url(url)  # type: ignore[no-untyped-call]
        self._host: str = options.get("host", "127.0.0.1")
        self._port: int = int(options.get("port", 6379))
        self._path: str | None = options.get("path")
        self._db = int(options.get("db", 0) or 0)
        self._username: str | None = options.get("username")
        self._password: str | None = options.get("password")
        self._ssl: ssl.SSLContext | None = None
        if options.get("connection_class") is SSLConnection:
            self._ssl = ssl.create_default_context()
            if str(options.get("ssl_cert_reqs", "required")).lower() in ("none", "cert_none"):
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._client_name = client_name
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def execute_command(self, *args: Any) -> Reply:
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._connect()
        return await connection.send(args)

    async def _connect(self) -> _Connection:
        if self._connecting is not None:  # another caller is connecting: share its connection
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        self._connecting = loop.create_future()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                connection = await self._open(loop)
        except BaseException as exc:
            failure: BaseException
            if isinstance(exc, TimeoutError):  # (an OSError too: test it first)
                failure = RedisTimeoutError(
                    f"could not connect to Redis within {self._connect_timeout_s:g} s"
                )
            elif isinstance(exc, OSError):
                failure = RedisConnectionError(f"could not connect to Redis: {exc}")
            elif isinstance(exc, Exception):
                failure = exc
            else:  # cancelled: the callers sharing this attempt get an error, not a cancel
                failure = RedisConnectionError("connecting to Redis was interrupted")
            waiters, self._connecting = self._connecting, None
            waiters.set_exception(failure)
            waiters.exception()  # retrieved: no "never retrieved" warning if nobody shared it
            if isinstance(exc, OSError):
                raise failure from exc
            raise
        self._connection = connection
        self._connecting.set_result(connection)
        self._connecting = None
        return connection

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        connection = self.connection_class(loop, self._command_timeout_s)
        if self._path is not None:
            await loop.create_unix_connection(lambda: connection, self._path)
        else:
            await loop.create_connection(lambda: connection, self._host, self._port, ssl=self._ssl)
        try:
            handshake: list[asyncio.Future[Reply]] = []
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else None
                handshake.append(connection.send(auth or ("AUTH", self._password)))
            if self._db:
                handshake.append(connection.send(("SELECT", self._db)))
            if self._client_name:
                handshake.append(connection.send(("CLIENT", "SETNAME", self._client_name)))
            for reply in handshake:
                await reply
        except BaseException:
            connection.close()
            raise
        return connection

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
