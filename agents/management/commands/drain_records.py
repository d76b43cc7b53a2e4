"""``manage.py drain_records [--once]``: move journalled execution records into the database.

``serve`` runs the same drainer in-process; this command is for operators: empty the journal
of a stopped server (``--once``), or run a standalone recorder next to Celery workers.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agents.backends import journal_drain
from agents.executions.processes import current_process
from agents.executions.recording import DrainResult, RecordDrainer


class Command(BaseCommand):
    help = "Store journalled execution records in the database (until stopped, or --once)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--once", action="store_true", help="drain what is there now, then exit"
        )
        parser.add_argument("--interval", type=float, default=0.2, help="seconds between drains")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["interval"] <= 0:
            self.stderr.write(f"--interval: must be > 0, got {options['interval']}")
            raise SystemExit(2)
        asyncio.run(self._run(once=options["once"], interval_s=options["interval"]))

    def _drain(self) -> Callable[[], Awaitable[DrainResult]]:
        return journal_drain()

    async def _run(self, *, once: bool, interval_s: float) -> None:
        drain = self._drain()
        if once:
            total = DrainResult()
            while True:
                result = await drain()
                if result.locked:
                    self.stderr.write("another drainer holds the journal lock; nothing done")
                    return
                total = DrainResult(
                    events=total.events + result.events,
                    rows=total.rows + result.rows,
                    rejected=total.rejected + result.rejected,
                )
                if not result.full:
                    break
            self.stdout.write(
                f"drained {total.events} events into {total.rows} executions"
                f" ({total.rejected} set aside)"
            )
            return
        from incidents.memory import memory_watch_start

        watch = await asyncio.to_thread(memory_watch_start, "drain_records")
        # A heartbeat (role ``drainer``): ``breakwater_processes`` then counts the standalone
        # recorders, and a dead one's row is marked dead like any other process's.
        heartbeat = current_process("drainer")
        await asyncio.to_thread(heartbeat.start)
        drainer = RecordDrainer(drain, interval_s=interval_s)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        drainer.start()
        self.stdout.write("draining records; Ctrl-C stops")
        await stop.wait()
        await drainer.stop()
        await asyncio.to_thread(heartbeat.stop)
        await asyncio.to_thread(watch.stop)
        self.stdout.write(f"stopped after {drainer.drained} events")
