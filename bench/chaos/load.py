"""Traffic: requests on every door with each answer recorded, and raw sockets that misbehave.

The doors (docs/INTERFACES.md §4): ``execute`` = ``POST /api/v1/agents/{name}/execute``, ``queue``
= ``POST /api/v1/agents/{name}/executions``, ``v1`` = ``POST /v1/chat/completions``, ``v1-stream``
the same with ``stream: true``. An :class:`Answer` keeps what a client saw: status, content type,
body, when it was sent and answered (``time.monotonic()``), or the transport error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.common import HOST


def door_path(door: str, agent: str) -> str:
    if door == "execute":
        return f"/api/v1/agents/{agent}/execute"
    if door == "queue":
        return f"/api/v1/agents/{agent}/executions"
    if door in ("v1", "v1-stream"):
        return "/v1/chat/completions"
    raise ValueError(door)


def body_for(door: str, agent: str, text: str) -> bytes:
    if door in ("execute", "queue"):
        return json.dumps({"input": text}).encode()
    doc: dict[str, Any] = {"model": agent, "messages": [{"role": "user", "content": text}]}
    if door == "v1-stream":
        doc["stream"] = True
    return json.dumps(doc).encode()


@dataclass(frozen=True)
class Call:
    """One request to send. ``body`` None: an ordinary one for the door (unique text)."""

    door: str
    agent: str
    key: str
    body: bytes | None = None
    tag: str = ""  # what the scenario wants to group answers by (a poison case, a phase)


@dataclass
class Answer:
    call: Call
    sent: float
    done: float
    status: int | None = None  # None: no HTTP answer (connection refused or reset, timeout)
    content_type: str = ""
    body: bytes = b""
    error: str = ""

    @property
    def door(self) -> str:
        return self.call.door

    @property
    def latency_s(self) -> float:
        return self.done - self.sent

    def doc(self) -> Any:
        if self.status is None or not self.content_type.startswith("application/json"):
            return None
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def success(self) -> bool:
        """The model answered (a degraded 200 on the REST door is not a success)."""
        if self.status != 200:
            return False
        if self.door == "v1-stream":
            return b"data: [DONE]" in self.body and b'"error"' not in self.body
        doc = self.doc()
        if not isinstance(doc, dict):
            return False
        if self.door == "execute":
            return doc.get("status") == "succeeded"
        return bool(doc.get("choices"))

    @property
    def accepted(self) -> bool:
        """The server took the request on (an execution exists for it)."""
        return self.execution_id is not None

    @property
    def execution_id(self) -> str | None:
        if self.status is None or self.status >= 300:
            return None
        if self.door == "v1-stream":
            for line in self.body.split(b"\n"):
                if line.startswith(b"data: {"):
                    with contextlib.suppress(ValueError):
                        ident = json.loads(line[6:]).get("id", "")
                        return str(ident).removeprefix("chatcmpl-") or None
            return None
        doc = self.doc()
        if not isinstance(doc, dict):
            return None
        if self.door in ("execute", "queue"):
            value = doc.get("execution_id")
            return str(value) if value else None
        ident = str(doc.get("id", ""))
        return ident.removeprefix("chatcmpl-") or None

    def typed_error(self, statuses: Sequence[int] = (503,)) -> bool:
        """A JSON error of the door's format with one of ``statuses``: the API's
        ``{"error": {"type", "message"}}``; on /v1, OpenAI's (``message``, ``type``, ``param``,
        ``code``)."""
        if self.status not in statuses:
            return False
        doc = self.doc()
        error = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(error, dict):
            return False
        if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str):
            return False
        if self.door.startswith("v1"):
            return "param" in error and "code" in error
        return True

    def kind(self) -> str:
        """A short label for tables: ``200``, ``503 json``, ``500 text/plain``, ``error: ...``."""
        if self.status is None:
            return f"no answer ({self.error})"
        ctype = self.content_type.split(";")[0] or "no content-type"
        doc = self.doc()
        if self.door == "execute" and self.status == 200 and isinstance(doc, dict):
            reason = doc.get("fallback_reason")
            return f"200 {doc.get('status')}" + (f" ({reason})" if reason else "")
        return f"{self.status} {ctype}"


def _text(n: int) -> str:
    return f"chaos {n} {random.randrange(1 << 30):08x}"


class Client:
    """An aiohttp session against one server (no connection limit, one timeout per request)."""

    def __init__(self, base: str, *, timeout_s: float = 30.0) -> None:
        self.base = base
        self.timeout_s = timeout_s
        self.session: aiohttp.ClientSession | None = None
        self.sent = 0

    async def __aenter__(self) -> Client:
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, call: Call) -> Answer:
        assert self.session is not None
        self.sent += 1
        body = (
            call.body
            if call.body is not None
            else body_for(call.door, call.agent, _text(self.sent))
        )
        headers = {"Authorization": f"Bearer {call.key}", "Content-Type": "application/json"}
        sent = time.monotonic()
        try:
            async with self.session.post(
                self.base + door_path(call.door, call.agent), data=body, headers=headers
            ) as resp:
                raw = await resp.read()
                return Answer(
                    call,
                    sent,
                    time.monotonic(),
                    resp.status,
                    resp.headers.get("Content-Type", ""),
                    raw,
                )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Answer(call, sent, time.monotonic(), error=type(exc).__name__)

    async def get(self, path: str, key: str | None = None) -> Answer:
        assert self.session is not None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        sent = time.monotonic()
        call = Call("get", path, key or "")
        try:
            async with self.session.get(self.base + path, headers=headers) as resp:
                raw = await resp.read()
                ctype = resp.headers.get("Content-Type", "")
                return Answer(call, sent, time.monotonic(), resp.status, ctype, raw)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Answer(call, sent, time.monotonic(), error=type(exc).__name__)


async def open_loop(
    client: Client,
    pick: Callable[[int], Call],
    *,
    rate: float,
    duration_s: float,
    stop: asyncio.Event | None = None,
) -> list[Answer]:
    """Send ``pick(i)`` at ``rate`` per second for ``duration_s`` whatever the answers (an
    open loop: a stalled server does not slow the arrivals), then wait for every answer."""
    tasks: list[asyncio.Task[Answer]] = []
    start = time.monotonic()
    n = int(rate * duration_s)
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(client.send(pick(i))))
    return list(await asyncio.gather(*tasks))


async def closed_loop(client: Client, calls: Sequence[Call], *, concurrency: int) -> list[Answer]:
    """Send every call, ``concurrency`` at a time."""
    queue = list(reversed(calls))
    answers: list[Answer] = []

    async def worker() -> None:
        while queue:
            answers.append(await client.send(queue.pop()))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return answers


# --- raw sockets ---------------------------------------------------------------------------------


def raw_head(method: str, path: str, key: str, port: int, length: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", f"Authorization: Bearer {key}"]
    lines += ["Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole HTTP/1.1 response (Content-Length or chunked)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    lower = head.lower()
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    if b"transfer-encoding: chunked" in lower:
        return body.endswith(b"0\r\n\r\n")
    return False


@dataclass
class Disconnect:
    complete: bool  # the whole response arrived before the client closed (not a disconnect)
    received: int  # response bytes seen before the close
    error: str = ""


async def disconnect_after(
    port: int,
    request: bytes,
    close_after_s: float,
    *,
    reset: bool,
    after_events: int | None = None,
) -> Disconnect:
    """Send ``request``, read for ``close_after_s`` (or, with ``after_events``, until that many
    server-sent events have arrived), then close the socket: with a RST (SO_LINGER 0) when
    ``reset``, else a FIN."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        return Disconnect(False, 0, type(exc).__name__)
    data = b""
    try:
        writer.write(request)
        await writer.drain()
        deadline = time.monotonic() + close_after_s
        while not _complete(data):
            if after_events is not None and data.count(b"data: ") >= after_events:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await asyncio.wait_for(reader.read(65536), timeout=left)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    except OSError as exc:
        return Disconnect(_complete(data), len(data), type(exc).__name__)
    finally:
        sock = writer.get_extra_info("socket")
        if reset and sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
    return Disconnect(_complete(data), len(data))


@dataclass
class Slow:
    kind: str
    path: str
    opened: float = 0.0
    closed: float | None = None  # when the server closed it (EOF, reset, a failed write)
    error: str = ""
    answer: bytes = b""  # what the server sent before closing (e.g. a 408)
    sent_bytes: int = field(default=0)


SLOW_KINDS = ("headers", "body-silent", "body-trickle")


async def slow_client(
    slow: Slow, port: int, key: str, *, interval_s: float, until: float, announce: int = 100_000
) -> Slow:
    """One slow client until ``until`` (monotonic), or until the server closes it.

    ``headers``: the request line and one more header line every ``interval_s``, never the blank
    line that ends them; ``body-silent``: whole headers announcing ``announce`` body bytes, then
    nothing; ``body-trickle``: the same headers, then 10 body bytes every ``interval_s``.
    """
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
    except OSError as exc:
        slow.closed, slow.error = time.monotonic(), type(exc).__name__
        return slow
    slow.opened = time.monotonic()
    gone = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                slow.answer += chunk
        if slow.closed is None:
            slow.closed = time.monotonic()
        gone.set()

    reading = asyncio.create_task(read())
    try:
        if slow.kind == "headers":
            writer.write(f"POST {slow.path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n".encode())
        else:
            writer.write(raw_head("POST", slow.path, key, port, announce))
        await writer.drain()
        n = 0
        while time.monotonic() < until and not gone.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    gone.wait(), timeout=min(interval_s, until - time.monotonic())
                )
            if gone.is_set() or time.monotonic() >= until:
                break
            n += 1
            if slow.kind == "headers":
                writer.write(f"X-Slow-{n}: {n}\r\n".encode())
            elif slow.kind == "body-trickle" and slow.sent_bytes + 10 <= announce:
                writer.write(b"0123456789")
                slow.sent_bytes += 10
            await writer.drain()
    except (OSError, ConnectionError) as exc:
        if slow.closed is None:
            slow.closed, slow.error = time.monotonic(), type(exc).__name__
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await writer.wait_closed()
    return slow
