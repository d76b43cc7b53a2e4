"""``manage.py create_user --username U --role viewer|operator|admin``: prints the password once."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.roles import ROLES
from console.users import user_create
from core.errors import Conflict, ValidationFailed


class Command(BaseCommand):
    help = "Create a console user with a role and print a generated password once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True, help=" | ".join(ROLES))
        parser.add_argument("--email", default="")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            created = user_create(
                username=options["username"],
                role=options["role"],
                email=options["email"],
                actor="system:create_user",
            )
        except ValidationFailed as exc:
            raise CommandError("; ".join(exc.errors)) from None
        except Conflict as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(created.password)
        self.stderr.write(
            f"Created {options['role']} {created.user.get_username()!r}. "
            "Store the password now: it cannot be shown again."
        )
