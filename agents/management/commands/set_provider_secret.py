from __future__ import annotations

import getpass
import sys
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.access.services import provider_secret_set
from core.errors import ApplicationError


class Command(BaseCommand):
    help = "Store a provider's API key encrypted (read from stdin or a prompt, never argv)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("provider")

    def handle(self, *args: Any, **options: Any) -> None:
        secret = (
            getpass.getpass("API key: ") if sys.stdin.isatty() else sys.stdin.readline().strip()
        )
        try:
            provider_secret_set(
                provider_name=options["provider"], secret=secret, actor="system:cli"
            )
        except (ApplicationError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"stored encrypted secret for provider {options['provider']}")
