"""One HTTP request through an ASGI application in this process: what a client would see."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Headers the server sets on its own (framing), not the application's answer.
FRAMING = frozenset({"date", "server", "transfer-encoding", "connection"})
# Headers every answer carries with a value of its own (a new request id unless the request
# sent one): two answers are the same without them (tests/agents/doors/test_shell.py checks
# them).
PER_REQUEST = frozenset({"x-request-id"})


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    content: bytes = b""

    def json(self) -> Any:
        return json.loads(self.content)

    def __getitem__(self, name: str) -> str:
        return self.headers[name.lower()]

    def semantic_headers(self) -> dict[str, str]:
        return {k: v for k, v in self.headers.items() if k not in FRAMING | PER_REQUEST}


async def asgi_request(
    app: Any,
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Sequence[bytes] = b"",
    scheme: str = "http",
    host: str | None = "localhost",
    content_length: bool = True,
    hang_up: bool = False,
) -> Answer:
    """Send one request; ``body`` as several chunks is sent as a chunked upload (no
    ``Content-Length``), as a server passes one on. ``hang_up``: the client disconnects once
    the body is sent, without waiting for the answer (``status_code`` stays 0 if none came)."""
    path, _, query = path.partition("?")
    chunks = [body] if isinstance(body, bytes) else list(body)
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    if host is not None:
        raw_headers.insert(0, (b"host", host.encode()))
    declared = any(k == b"content-length" for k, _ in raw_headers)
    if content_length and isinstance(body, bytes) and body and not declared:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode("latin-1"),
        "root_path": "",
        "headers": raw_headers,
        "client": ("127.0.0.1", 50000),
        "server": ("localhost", 443 if scheme == "https" else 80),
    }
    answered = asyncio.Event()
    pending = list(chunks)
    answer = Answer(0)
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if pending:
            chunk = pending.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        if not hang_up:
            await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status_code = message["status"]
            for name, value in message.get("headers", ()):
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                answer.headers[key] = (
                    f"{answer.headers[key]}, {text}" if key in answer.headers else text
                )
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                answered.set()

    await app(scope, receive, send)
    answer.content = b"".join(parts)
    return answer
