"""fakellm: a fault-injecting upstream speaking the OpenAI and Anthropic wire formats.

One aiohttp application, single process, no Django. Endpoints:

- ``POST /v1/chat/completions`` (OpenAI), ``POST /v1/messages`` (Anthropic),
  ``GET /v1/models`` (Anthropic's list shape when ``anthropic-version`` is sent);
- ``GET /_admin/faults``, ``PUT /_admin/faults`` (replace), ``POST /_admin/faults`` (merge),
  ``POST /_admin/reset``, ``GET /_admin/stats``, ``GET /_admin/requests`` (recent requests).

Use :func:`create_app` for aiohttp test utilities, :class:`FakeLLM` (async) or
:class:`FakeLLMThread` (sync tests) to run one on a free port, and :func:`run` for the CLI.
The handlers are in ``generation`` and ``admin``, what they mutate in ``state``; this module
puts them in one application and runs it.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
from collections.abc import Callable

from aiohttp import web

from agents.devtools.fakellm.admin import get_faults, get_requests, get_stats, reset, set_faults
from agents.devtools.fakellm.faults import FaultConfig
from agents.devtools.fakellm.generation import chat_completions, messages, models
from agents.devtools.fakellm.state import STATE, State


def create_app(config: FaultConfig | None = None) -> web.Application:
    """The aiohttp application; ``config`` is the start-up (and reset) fault configuration."""
    app = web.Application(client_max_size=16 * 1024 * 1024)
    state = State(config or FaultConfig())
    app[STATE] = state

    async def on_shutdown(app: web.Application) -> None:
        state.shutdown.set()  # releases hanging requests

    app.on_shutdown.append(on_shutdown)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/_admin/faults", get_faults)
    app.router.add_put("/_admin/faults", set_faults)
    app.router.add_post("/_admin/faults", set_faults)
    app.router.add_post("/_admin/reset", reset)
    app.router.add_get("/_admin/stats", get_stats)
    app.router.add_get("/_admin/requests", get_requests)
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class FakeLLM:
    """Run fakellm in the current event loop: ``async with FakeLLM(config) as fake: fake.url``."""

    def __init__(
        self, config: FaultConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.app = create_app(config)
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> State:
        return self.app[STATE]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> FakeLLM:
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=1024).start()
        return self

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeLLM:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class FakeLLMThread:
    """fakellm on its own event loop in a daemon thread, for synchronous tests.

    ``with FakeLLMThread(FaultConfig(error_rate=1)) as fake: httpx.post(fake.url + ...)``.
    Change faults through the admin API (``fake.url + "/_admin/faults"``).
    """

    def __init__(
        self, config: FaultConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config
        self._host = host
        self._port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.server: FakeLLM | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return self.server.url

    def start(self) -> FakeLLMThread:
        self._thread = threading.Thread(target=self._main, name="fakellm", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self.server = await FakeLLM(self._config, host=self._host, port=self._port).start()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> FakeLLMThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # installed with uvicorn[standard]; about 1.5x the throughput
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(
    *,
    host: str,
    port: int,
    config: FaultConfig,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT or SIGTERM; announces the bound address (useful with ``port=0``)."""
    loop = _new_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        server = await FakeLLM(config, host=host, port=port).start()
        announce(f"fakellm listening on {server.url}")
        announce(f"faults: {json.dumps(config.to_dict())}")
        try:
            await stop.wait()
        finally:
            await server.close()
            announce("fakellm stopped")

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
        asyncio.set_event_loop(None)
