from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.config.apply import ConfigError, config_apply, config_parse


class Command(BaseCommand):
    help = "Create or update providers, models, agents and budgets from a YAML file, atomically."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-f", "--file", required=True, help="YAML file, or - for stdin")
        parser.add_argument(
            "--prune", action="store_true", help="delete what the file does not mention"
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="validate and show changes, write nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        path = options["file"]
        try:
            text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(
                f"{path}: not UTF-8 text (invalid byte at offset {exc.start})"
            ) from None
        try:
            result = config_apply(
                document=config_parse(text),
                prune=options["prune"],
                dry_run=options["dry_run"],
            )
        except ConfigError as exc:
            for line in exc.errors:
                self.stderr.write(f"{path}: {line}")
            raise CommandError(f"{len(exc.errors)} error(s); nothing was applied") from None
        for label in result.created:
            self.stdout.write(f"created {label}")
        for label in result.updated:
            self.stdout.write(f"updated {label}")
        for label in result.deleted:
            self.stdout.write(f"deleted {label}")
        prefix = "dry run, nothing written: " if options["dry_run"] else ""
        self.stdout.write(prefix + result.summary())
