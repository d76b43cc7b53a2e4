"""Real local receivers for notification tests: an HTTP endpoint (``http.server`` on a thread) and
an SMTP server (aiosmtpd's controller), each answering from a script (fail N times, then accept)
and recording everything it was sent.

Ports: ephemeral, or the first free one in ``BREAKWATER_TEST_PORTS`` (``19500-19599``) when set.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def receiver_port() -> int:
    """A free port: from ``BREAKWATER_TEST_PORTS`` (``low-high``) if set, else any."""
    spec = os.environ.get("BREAKWATER_TEST_PORTS", "")
    candidates = range(0, 1)
    if spec:
        low, _, high = spec.partition("-")
        candidates = range(int(low), int(high) + 1)
    for port in candidates:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError(f"no free port in BREAKWATER_TEST_PORTS={spec}")


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int


@dataclass
class HttpReceiver:
    """Answers each POST with the next status of ``statuses`` (the last one repeats)."""

    statuses: list[int] = field(default_factory=lambda: [200])
    location: str = ""  # sent with a 3xx
    requests: list[Received] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.answered < 300]

    def _next(self) -> int:
        with self._lock:
            index = min(len(self.requests), len(self.statuses) - 1)
            return self.statuses[index]

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                status = receiver._next()
                with receiver._lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, status)
                    )
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                answer = b"ok" if status < 300 else b"receiver says no"
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


@contextlib.contextmanager
def http_receiver(
    statuses: list[int] | None = None, *, location: str = ""
) -> Iterator[HttpReceiver]:
    receiver = HttpReceiver(statuses=statuses or [200], location=location)
    server = ThreadingHTTPServer(("127.0.0.1", receiver_port()), receiver.handler())
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class SmtpScript:
    """An aiosmtpd handler: refuses the first ``failures`` messages (451), then accepts."""

    failures: int = 0
    tries: int = 0
    messages: list[Message] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.tries += 1
        if self.tries <= self.failures:
            return "451 4.3.0 mailbox busy, try again later"
        self.messages.append(message_from_bytes(envelope.original_content or envelope.content))
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"


@contextlib.contextmanager
def smtp_receiver(failures: int = 0) -> Iterator[tuple[SmtpScript, int]]:
    from aiosmtpd.controller import Controller

    script = SmtpScript(failures=failures)
    controller = Controller(script, hostname="127.0.0.1", port=receiver_port())
    controller.start()
    try:
        yield script, controller.port
    finally:
        controller.stop()


def wait_until(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy (its value), or fail after timeout."""
    end = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"not true within {timeout_s} s: {check}")
        time.sleep(0.02)
