"""``manage.py revoke_api_key PREFIX``: revoke a key in every process within about a second."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.access.keys import KEY_PREFIX, looks_like_key, prefix_of
from agents.access.services import api_key_revoke
from core.errors import NotFound


class Command(BaseCommand):
    help = (
        "Revoke an API key by its prefix (bw_ + 8 characters, as `create_api_key` and the key "
        "list show it); every serving process refuses it within about a second. Audited."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prefix", help="the key's prefix (or the whole key)")
        parser.add_argument("--reason", default="", help="kept in the audit trail")

    def handle(self, *args: Any, **options: Any) -> None:
        given = options["prefix"].strip()
        # The whole key works too (what a leak report hands you); only its prefix is used.
        prefix = prefix_of(given) if looks_like_key(given) else given
        if not prefix.startswith(KEY_PREFIX):
            raise CommandError(f"PREFIX: expected bw_ followed by 8 characters, got {given[:16]!r}")
        try:
            key, now = api_key_revoke(
                prefix=prefix, actor="system:revoke_api_key", reason=options["reason"]
            )
        except NotFound:
            raise CommandError(f"no API key has the prefix {prefix!r}") from None
        if now:
            self.stdout.write(
                f"Revoked {key.prefix} ({key.name}); every serving process refuses it within "
                "about a second."
            )
        else:
            self.stdout.write(f"{key.prefix} ({key.name}) was already revoked at {key.revoked_at}.")
