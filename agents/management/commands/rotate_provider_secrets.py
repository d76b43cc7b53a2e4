from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from agents.services import provider_secrets_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored provider secrets under the first BREAKWATER_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        count = provider_secrets_rotate(actor="system:cli")
        self.stdout.write(f"re-encrypted {count} provider secret(s)")
