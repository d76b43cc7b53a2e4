from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from agents.access.crypto import generate_key


class Command(BaseCommand):
    help = "Print a new Fernet key for BREAKWATER_ENCRYPTION_KEYS."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(generate_key())
