from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.devtools.history import (
    DEFAULT_BATCH,
    MAX_DAYS,
    HistoryError,
    history_plan,
    history_seed,
)


class ProgressBar:
    """One stderr line, rewritten in place (at most ten times a second)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.started = time.perf_counter()
        self.phase = ""
        self.phase_started = self.started
        self.shown = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if phase != self.phase:
            if self.phase:
                self.stream.write("\n")
            self.phase, self.phase_started, self.shown = phase, now, 0.0
        if done < total and now - self.shown < 0.1:
            return
        self.shown = now
        elapsed = now - self.phase_started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else 0.0
        width = 30
        filled = width * done // total if total else width
        self.stream.write(
            f"\r{phase:<10} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
            f"{100 * done // max(total, 1):3d}% {rate:,.0f}/s eta {eta:4.0f}s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.phase:
            self.stream.write("\n")
            self.stream.flush()


class Command(BaseCommand):
    help = (
        "Write realistic past executions (every agent, statuses, fallbacks, costs, ledger, "
        "incidents) over the past D days, then build the rollups. COPY on PostgreSQL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--executions", type=int, required=True, help="how many (> 0)")
        parser.add_argument(
            "--days", type=int, required=True, help=f"spread over the past D days (1..{MAX_DAYS})"
        )
        parser.add_argument("--seed", type=int, default=None, help="same seed, same history")
        parser.add_argument(
            "--agents", default=None, help="comma-separated names (default: every agent)"
        )
        parser.add_argument(
            "--batch", type=int, default=DEFAULT_BATCH, help="rows per COPY / bulk insert"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        agents = options["agents"].split(",") if options["agents"] is not None else None
        try:
            plan = history_plan(
                executions=options["executions"],
                days=options["days"],
                agents=agents,
                seed=options["seed"],
                batch=options["batch"],
            )
        except HistoryError as exc:
            raise CommandError(str(exc)) from exc
        bar = ProgressBar(sys.stderr) if options["verbosity"] > 0 else None
        try:
            result = history_seed(plan, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        if options["verbosity"] > 0:
            self.stdout.write(
                f"{result.executions:,} executions ({len(plan.agents)} agents, "
                f"{plan.days} days, seed {result.seed}), {result.spend_entries:,} ledger "
                f"entries, {result.incidents} incidents in {result.insert_s:.1f} s "
                f"({result.rows_per_s:,.0f} executions/s); {result.rollup_rows:,} rollup rows "
                f"for {result.days} days in {result.rollup_s:.1f} s"
            )
