"""``manage.py serve``: the production ASGI server (uvicorn with uvloop + httptools).

In embedded mode it also runs the worker and scheduler in-process. SIGINT/SIGTERM stop the HTTP
server first (in-flight requests finish), then the scheduler and worker, then the process exits
with nothing left behind. See docs/DECISIONS.md for why uvicorn rather than daphne.

``--workers N`` (or a recycling limit: ``--max-requests``, ``--max-rss-mb``) runs a supervisor
(console/supervisor.py) of N such processes on one socket instead; each worker is this command
again with ``--listen-fd``. Every serving process runs a memory watch (incidents/memory.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import signal
import socket
import sys
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from agents import backends

if TYPE_CHECKING:
    from agents.devtools.upstreams import OutageSchedule
    from console.supervisor import ControlPipe
    from core.memory import MemoryWatch

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
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.BREAKWATER_SERVE_WORKERS,
            help="worker processes on one socket, under a supervisor (BREAKWATER_SERVE_WORKERS;"
            " default 1: this process serves)",
        )
        parser.add_argument(
            "--max-requests",
            type=int,
            default=settings.BREAKWATER_SERVE_MAX_REQUESTS,
            help="recycle a worker after this many requests, plus up to"
            " BREAKWATER_SERVE_MAX_REQUESTS_JITTER (BREAKWATER_SERVE_MAX_REQUESTS; 0: never)",
        )
        parser.add_argument(
            "--max-rss-mb",
            type=float,
            default=settings.BREAKWATER_SERVE_MAX_RSS_MB,
            help="recycle a worker whose RSS exceeds this (BREAKWATER_SERVE_MAX_RSS_MB; 0: never)",
        )
        # A supervised worker (console/supervisor.py): the shared socket and the control pipe.
        parser.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
        parser.add_argument("--control-fd", type=int, default=None, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        if not 0 < options["port"] < 65536:
            self.stderr.write(f"--port: must be between 1 and 65535, got {options['port']}")
            raise SystemExit(2)
        for name, low in (("workers", 1), ("max_requests", 0), ("max_rss_mb", 0)):
            if options[name] < low:
                flag = "--" + name.replace("_", "-")
                self.stderr.write(f"{flag}: must be >= {low}, got {options[name]}")
                raise SystemExit(2)
        supervised = options["workers"] > 1 or options["max_requests"] or options["max_rss_mb"]
        if options["listen_fd"] is None and supervised and self.demo is None:
            self._supervise(options)
            return
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

        server: uvicorn.Server
        control = sockets = None
        if options["listen_fd"] is not None and options["control_fd"] is not None:
            from console.supervisor import ControlPipe, RecyclingServer

            control = ControlPipe(options["control_fd"])
            limit = options["max_requests"]
            if limit:  # jitter: the workers do not all recycle at once
                limit += random.randint(0, settings.BREAKWATER_SERVE_MAX_REQUESTS_JITTER)
            server = RecyclingServer(config, control=control, max_requests=limit)
            sockets = [socket.socket(fileno=options["listen_fd"])]
        else:
            server = uvicorn.Server(config)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            try:
                runner.run(
                    _main(
                        server,
                        embedded=embedded,
                        loadgen_rate=options["loadgen_rate"],
                        demo=self.demo,
                        sockets=sockets,
                        control=control,
                        max_rss_mb=options["max_rss_mb"],
                    )
                )
            except UpstreamPortInUse as exc:
                self.stderr.write(str(exc))
                raise SystemExit(1) from None

    def _supervise(self, options: dict[str, Any]) -> None:
        """Run the supervisor of ``--workers`` serving processes (console/supervisor.py)."""
        from agents.metrics import mark_process_dead, multiprocess_dir, prepare_multiprocess_dir

        workers = options["workers"]
        if backends.embedded() and workers > 1:
            self.stderr.write(
                "--workers: embedded mode runs one serving process (breakers, budgets, rate limits"
                " and the cache live in its memory); set REDIS_URL for more workers"
            )
            raise SystemExit(2)
        if multiprocess_dir() is None:
            # Each worker's metrics go to files that /metrics merges. prometheus_client reads the
            # variable when it is first imported, which Django's set-up has done: start again.
            directory = prepare_multiprocess_dir(settings.VAR_DIR / "prometheus")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])  # noqa: S606
        from console.supervisor import Supervisor, bind_socket
        from core.memory import RECYCLES
        from incidents.memory import memory_incident_resolve_dead

        try:
            sock = bind_socket(options["host"], options["port"])
        except OSError as exc:
            self.stderr.write(
                f"--port: cannot listen on {options['host']}:{options['port']}: {exc}"
            )
            raise SystemExit(1) from None
        for reason in ("max_requests", "max_rss", "died"):
            RECYCLES.labels(role="serve", reason=reason)

        def child_args(slot: int, listen_fd: int, control_fd: int) -> list[str]:
            args = [
                sys.executable,
                str(settings.BASE_DIR / "manage.py"),
                "serve",
                "--host", options["host"],
                "--port", str(options["port"]),
                "--workers", "1",
                "--max-requests", str(options["max_requests"]),
                "--max-rss-mb", str(options["max_rss_mb"]),
                "--listen-fd", str(listen_fd),
                "--control-fd", str(control_fd),
            ]  # fmt: skip
            if options["no_embedded"]:
                args.append("--no-embedded")
            if options["access_log"]:
                args.append("--access-log")
            if slot == 0 and options["loadgen_rate"]:  # demo traffic once, not once a worker
                args += ["--loadgen-rate", str(options["loadgen_rate"])]
            return args

        def on_exit(pid: int, reason: str) -> None:
            mark_process_dead(pid)
            if reason != "stopped":
                RECYCLES.labels(role="serve", reason=reason).inc()
            memory_incident_resolve_dead("serve", pid, reason)

        log.info(
            "supervising %d worker(s) on %s:%d (max requests %s, max RSS %s MiB)",
            workers,
            options["host"],
            options["port"],
            options["max_requests"] or "-",
            options["max_rss_mb"] or "-",
        )
        Supervisor(sock=sock, workers=workers, child_args=child_args, on_exit=on_exit).run()
        log.info("stopped")


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
    sockets: list[socket.socket] | None = None,
    control: ControlPipe | None = None,
    max_rss_mb: float = 0.0,
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
    watch = await asyncio.to_thread(_memory_watch, control, max_rss_mb)
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
    ready = asyncio.create_task(_tell_ready(server, control)) if control is not None else None
    try:
        await server.serve(sockets=sockets)
    finally:
        if ready is not None:
            ready.cancel()
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
        await asyncio.to_thread(watch.stop)  # resolves this process's memory incident
        await asyncio.to_thread(current_process().stop)  # nothing of ours runs any more
        log.info("stopped")


def _memory_watch(control: ControlPipe | None, max_rss_mb: float) -> MemoryWatch:
    """This process's memory watch; a supervised worker asks to be recycled past its RSS
    limit. ``BREAKWATER_MEMORY_LEAK_BYTES_PER_S`` (drills) starts a leak here."""
    from core.memory import MB, RECYCLES, leak_start
    from incidents.memory import memory_watch_start

    for reason in ("max_requests", "max_rss", "died"):  # the series exist from start-up
        RECYCLES.labels(role="serve", reason=reason)
    check = None
    if control is not None and max_rss_mb > 0:
        check = control.rss_check(int(max_rss_mb * MB))
    if settings.BREAKWATER_MEMORY_LEAK_BYTES_PER_S > 0:
        leak_start(settings.BREAKWATER_MEMORY_LEAK_BYTES_PER_S)
    watch = memory_watch_start("serve", on_sample=check)
    # For the drill endpoint (console/drills/api.py): is a leak here recycled, and past what?
    watch.supervised = control is not None
    watch.recycle_rss_bytes = int(max_rss_mb * MB) if check is not None else 0
    return watch


async def _tell_ready(server: uvicorn.Server, control: ControlPipe) -> None:
    """Tell the supervisor once this worker accepts connections."""
    while not server.started:
        if server.should_exit:
            return
        await asyncio.sleep(0.05)
    control.ready()
