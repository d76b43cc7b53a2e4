"""``manage.py demo`` (what `make run` calls): migrate, load the demo, ensure an admin, serve."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

DEMO_FILE = Path(settings.BASE_DIR) / "demo" / "breakwater.yaml"


def _admin_password() -> tuple[str, bool]:
    """The demo admin's password, generated once and kept in var/ (mode 0600)."""
    path = Path(settings.VAR_DIR) / "demo-admin-password"
    if path.exists():
        return path.read_text().strip(), False
    password = secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password)
    return password, True


class Command(BaseCommand):
    help = "Migrate, load demo/breakwater.yaml, create the demo admin and serve."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-serve", action="store_true", help="prepare only")
        parser.add_argument(
            "--loadgen-rate", type=float, default=3.0, help="demo executions/s (0 = none)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        call_command("apply", file=str(DEMO_FILE), stdout=self.stdout)
        password, new = _admin_password()
        user_model = get_user_model()
        user = user_model.objects.filter(username="admin").first()
        if user is None:
            user_model.objects.create_superuser("admin", "admin@example.com", password)
        elif new or not user.check_password(password):
            user.set_password(password)
            user.save(update_fields=["password"])
        url = f"http://{options['host']}:{options['port']}/"
        self.stdout.write(
            self.style.SUCCESS(
                f"\nBreakwater demo: {url}\n"
                f"  log in as  admin / {password}\n"
                f"  (password kept in {Path(settings.VAR_DIR) / 'demo-admin-password'})\n"
                "  Ctrl-C stops everything.\n"
            )
        )
        if not options["no_serve"]:
            call_command(
                "serve",
                host=options["host"],
                port=options["port"],
                loadgen_rate=options["loadgen_rate"],
            )
