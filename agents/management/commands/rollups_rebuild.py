"""``manage.py rollups_rebuild [--days N]``: rebuild the rollups of the last N UTC days from the
executions and set the rollups' watermark (budgets/rollups.py, docs/DECISIONS.md #23)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from budgets.rollups import rollups_rebuild
from core.errors import ValidationFailed

MAX_DAYS = 35  # the hour rows' keep: older days have only their day rows left to rebuild


class Command(BaseCommand):
    help = (
        "Rebuild the daily spend and traffic rollups of the last N UTC days (today included) "
        "from the executions, e.g. after changing an agent's slo.latency_ms or rows by hand."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=2, help=f"1..{MAX_DAYS} (default 2)")

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["days"]
        if not 1 <= days <= MAX_DAYS:
            raise CommandError(f"--days: {days} must be between 1 and {MAX_DAYS}")
        try:
            kept = rollups_rebuild(days=days)
        except ValidationFailed as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"rebuilt {days} day(s): {kept} daily spend row(s)")
