from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.devtools.loadgen import LoadStats, run_load


def ensure_loadgen_key() -> str:
    """A fresh execute-scope key for this run (keys are stored hashed; we cannot reuse one)."""
    from agents.access.services import api_key_create

    return api_key_create(name="loadgen", scopes=["execute"], actor="system:loadgen").plaintext


class Command(BaseCommand):
    help = "Send demo/load traffic (the reference deployment's mix) through the execute API."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rate", type=float, default=5.0, help="executions per second")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds (0 = forever)")
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--key", default=None, help="API key (default: create one)")
        parser.add_argument("--agents", default="", help="comma-separated subset")
        parser.add_argument("--seed", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rate"] <= 0 or options["rate"] > 10_000:
            raise CommandError("--rate: must be > 0 and <= 10000")
        if options["duration"] < 0:
            raise CommandError("--duration: must be >= 0")
        key = options["key"] or ensure_loadgen_key()
        agents = [a for a in options["agents"].split(",") if a] or None
        stats = LoadStats()
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                run_load(
                    base_url=options["url"].rstrip("/"),
                    api_key=key,
                    rate=options["rate"],
                    duration_s=options["duration"] or None,
                    agents=agents,
                    seed=options["seed"],
                    stats=stats,
                )
            )
        self.stdout.write(stats.summary())
