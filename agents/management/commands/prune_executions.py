"""``manage.py prune_executions [--days N]``: apply retention now, until nothing is left.

The periodic job ``executions-prune`` (console/schedule.py) does the same every 5 minutes, at
most a minute per run; this command is for operators: catch up after enabling retention on a
large history, or free space with a shorter retention once (``--days``). Same batches, same
pauses (agents/executions/retention.py), so writers keep their latency meanwhile. Audited.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.executions.retention import executions_prune


class Command(BaseCommand):
    help = (
        "Delete finished executions older than BREAKWATER_RETENTION_DAYS (or --days) in small "
        "batches; the ledger, rollups, and queued or running executions are kept. Audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help=f"keep this many days (default BREAKWATER_RETENTION_DAYS, "
            f"now {settings.BREAKWATER_RETENTION_DAYS})",
        )
        parser.add_argument("--reason", default="", help="kept in the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if days is not None and days < 1:
            raise CommandError(f"--days: must be at least 1, got {days}")
        verbosity = options["verbosity"]

        def progress(count: int, total: int) -> None:
            if verbosity > 1:
                self.stdout.write(f"  deleted {count} (total {total})")

        run = executions_prune(
            days=days,
            budget_s=None,
            on_batch=progress,
            actor="system:prune_executions",
            reason=options["reason"],
        )
        oldest = run.oldest_kept.isoformat() if run.oldest_kept else "none"
        self.stdout.write(
            f"Deleted {run.deleted} finished executions created before {run.cutoff.isoformat()} "
            f"in {run.batches} batches ({run.elapsed_s:.1f}s); oldest execution kept: {oldest}."
        )
