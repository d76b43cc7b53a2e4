from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from agents.access.services import api_key_create
from core.errors import ValidationFailed


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


class Command(BaseCommand):
    help = "Create an API key and print it once (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--scopes", required=True, help="comma-separated: read,execute,operate,admin"
        )
        parser.add_argument("--agents", default="", help="comma-separated allow-list (default all)")
        parser.add_argument("--expires-at", default=None, help="ISO 8601 date-time with offset")
        parser.add_argument(
            "--rpm", type=int, default=None, help="requests per minute for this key"
        )
        parser.add_argument("--tpm", type=int, default=None, help="tokens per minute for this key")

    def handle(self, *args: Any, **options: Any) -> None:
        expires_at = None
        if options["expires_at"]:
            expires_at = parse_datetime(options["expires_at"])
            if expires_at is None or expires_at.tzinfo is None:
                raise CommandError("--expires-at: expected ISO 8601 with a UTC offset")
            if expires_at <= timezone.now():
                raise CommandError("--expires-at: must be in the future")
        try:
            created = api_key_create(
                name=options["name"],
                scopes=_csv(options["scopes"]),
                agents=_csv(options["agents"]),
                expires_at=expires_at,
                rate_limit_rpm=options["rpm"],
                rate_limit_tpm=options["tpm"],
                actor="system:create_api_key",
            )
        except ValidationFailed as exc:
            raise CommandError("; ".join(exc.errors)) from None
        self.stdout.write(created.plaintext)
        self.stderr.write(
            f"Created key {created.api_key.prefix} ({created.api_key.scopes}). "
            "Store it now: it cannot be shown again."
        )
