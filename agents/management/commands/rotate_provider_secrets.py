from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from agents.access.crypto import SecretUnavailable
from agents.access.services import provider_secrets_rotate


class Command(BaseCommand):
    help = "Re-encrypt stored provider secrets under the first BREAKWATER_ENCRYPTION_KEYS key."

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            count = provider_secrets_rotate(actor="system:cli")
        except (SecretUnavailable, ImproperlyConfigured) as exc:
            raise CommandError(f"{exc}; nothing was changed") from None
        self.stdout.write(f"re-encrypted {count} provider secret(s)")
