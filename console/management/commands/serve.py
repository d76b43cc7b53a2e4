"""``manage.py serve``: the production ASGI server (uvicorn with uvloop + httptools).

In embedded mode it also runs the worker and scheduler in-process. SIGINT/SIGTERM stop the HTTP
server first (in-flight requests finish), then the scheduler and worker, then the process exits
with nothing left behind. See docs/DECISIONS.md for why uvicorn rather than daphne.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from agents import backends

if TYPE_CHECKING:
    from agents.devtools.upstreams import OutageSchedule

log = logging.getLogger("breakwater.serve")


@dataclass(frozen=True, slots=True)
class Demo:
    """What ``manage.py demo`` adds: the demo's fakellm upstreams (demo/breakwater.yaml's
    providers), their outages (None: none) and the seed of the demo traffic."""

    outages: OutageSchedule | None
    seed: int


class Command(BaseCommand):
    help = "Serve console, API and websockets (and, in embedded mode, the worker and scheduler)."
    requires_system_checks = []  # `check` runs at import of the app; keep start-up fast
    demo: Demo | None = None  # set by `manage.py demo` on the instance it calls

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-embedded",
            action="store_true",
            help="do not run the in-process worker/scheduler even in embedded mode",
        )
        parser.add_argument("--access-log", action="store_true")
        parser.add_argument(
            "--loadgen-rate",
            type=float,
            default=0.0,
            help="also send demo traffic at this many executions/s (what `make run` does)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 < options["port"] < 65536:
            self.stderr.write(f"--port: must be between 1 and 65535, got {options['port']}")
            raise SystemExit(2)
        from console.http_protocol import protocol_with_deadlines

        config = uvicorn.Config(
            "console.asgi:application",
            host=options["host"],
            port=options["port"],
            loop="uvloop",
            # httptools with header and body read deadlines (slow clients are cut off).
            http=protocol_with_deadlines(
                header_timeout_s=settings.BREAKWATER_HEADER_TIMEOUT_S,
                body_timeout_s=settings.BREAKWATER_BODY_TIMEOUT_S,
            ),
            # Past this many open connections (sockets, websockets included) a request is
            # answered 503; the deadlines above free the slots that slow clients hold.
            limit_concurrency=settings.BREAKWATER_MAX_CONNECTIONS,
            ws="websockets-sansio",
            lifespan="off",
            access_log=options["access_log"],
            log_level=settings.LOG_LEVEL.lower(),
            timeout_graceful_shutdown=15,
            proxy_headers=settings.SECURE_PROXY_SSL_HEADER is not None,
            server_header=False,
        )
        # uvicorn.Config has configured uvicorn's loggers by now; keys in query strings
        # (websockets' ?key=bw_...) must not reach them.
        from core.log_redaction import redact_keys_in_server_logs

        redact_keys_in_server_logs()
        embedded = backends.embedded() and not options["no_embedded"]
        if options["loadgen_rate"] < 0 or options["loadgen_rate"] > 1000:
            self.stderr.write("--loadgen-rate: must be between 0 and 1000")
            raise SystemExit(2)
        import uvloop

        from agents.devtools.upstreams import UpstreamPortInUse

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            try:
                runner.run(
                    _main(
                        uvicorn.Server(config),
                        embedded=embedded,
                        loadgen_rate=options["loadgen_rate"],
                        demo=self.demo,
                    )
                )
            except UpstreamPortInUse as exc:
                self.stderr.write(str(exc))
                raise SystemExit(1) from None


async def _loadgen(server: uvicorn.Server, rate: float, key: str, seed: int | None) -> None:
    """Demo traffic against this very server, stopped as soon as shutdown begins."""
    from agents.devtools.loadgen import run_load

    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    host, port = server.config.host, server.config.port
    load = asyncio.create_task(
        run_load(
            base_url=f"http://{host}:{port}", api_key=key, rate=rate, duration_s=None, seed=seed
        )
    )
    while not server.should_exit and not load.done():  # noqa: ASYNC110 - uvicorn exposes a flag
        await asyncio.sleep(0.1)
    load.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await load


async def _main(
    server: uvicorn.Server,
    *,
    embedded: bool,
    loadgen_rate: float = 0.0,
    demo: Demo | None = None,
) -> None:
    # uvicorn captures SIGINT/SIGTERM during serve() and re-raises them afterwards; these
    # handlers receive that re-raise, so the embedded components below stop in order instead
    # of being torn down by a KeyboardInterrupt.
    def _quiet(sig: int, frame: FrameType | None) -> None:
        return None

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _quiet)

    upstreams = outages = None
    if demo is not None:
        from agents.devtools.upstreams import DemoUpstreams, run_outages

        # Before the engine and the worker: the first execution finds its upstream listening.
        upstreams = DemoUpstreams()
        await upstreams.start()
        if demo.outages is not None:
            outages = asyncio.create_task(run_outages(upstreams, demo.outages))
    worker = scheduler = None
    if embedded:
        from console.embedded import EmbeddedScheduler
        from core.worker import EmbeddedWorker

        worker = EmbeddedWorker()
        scheduler = EmbeddedScheduler(worker=worker)
        scheduler.start()
        log.info("embedded mode: in-process worker and scheduler running")
    from agents.engine import engine_shutdown, get_engine
    from agents.executions.processes import current_process

    # This process's heartbeat, before any execution: if it dies, the executions it leaves
    # running are settled within about a minute (agents.executions.processes).
    await asyncio.to_thread(current_process("serve").start)
    load = None
    if loadgen_rate > 0:
        from console.demo import demo_loadgen_key

        # The key exists before the engine loads its config, so the first request is known.
        key = await asyncio.to_thread(demo_loadgen_key)
        seed = demo.seed if demo is not None else None
        load = asyncio.create_task(_loadgen(server, loadgen_rate, key, seed))
    await get_engine().start()
    # What start-up loaded (Django, the apps, the config) lives as long as the process: moved out
    # of the collector's reach, so that a full collection does not walk it in the middle of a
    # request (tens of ms at p99 otherwise; docs/BENCHMARKS.md).
    gc.collect()
    gc.freeze()
    try:
        await server.serve()
    finally:
        if load is not None:
            load.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await load
        if scheduler is not None:
            await scheduler.stop()
        if worker is not None:
            await worker.stop()
        await engine_shutdown()  # last: the worker may still record; the drainer drains
        if outages is not None:
            outages.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await outages
        if upstreams is not None:
            await upstreams.close()  # after everything that could still call them
        await asyncio.to_thread(current_process().stop)  # nothing of ours runs any more
        log.info("stopped")
