from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.devtools.fakellm.faults import FaultConfigError, add_arguments, config_from_options
from agents.devtools.fakellm.server import run


class Command(BaseCommand):
    help = (
        "Run fakellm: a fault-injecting upstream speaking the OpenAI and Anthropic wire formats "
        "(see docs/FAKELLM.md)."
    )
    requires_system_checks: list[str] = []  # a test tool: start even when checks would fail

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = config_from_options(options)
        except FaultConfigError as exc:
            raise CommandError(str(exc)) from None
        try:
            run(host=options["host"], port=options["port"], config=config, announce=self._say)
        except OSError as exc:
            raise CommandError(
                f"cannot listen on {options['host']}:{options['port']}: {exc.strerror}"
            ) from None

    def _say(self, line: str) -> None:
        self.stdout.write(line)
        self.stdout.flush()
