"""``manage.py demo`` (what `make run` calls): migrate, load the demo, ensure an admin, serve."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.devtools.upstreams import OutageSchedule
from console.management.commands.serve import Command as Serve
from console.management.commands.serve import Demo

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


def _outages(options: dict[str, Any]) -> OutageSchedule | None:
    """The outage schedule the flags ask for (None: ``--outage-every-s 0``)."""
    if options["outage_every_s"] == 0:
        return None
    low, sep, high = str(options["outage_s"]).partition("-")
    try:
        min_s = float(low)
        max_s = float(high) if sep else min_s
    except ValueError:
        raise CommandError(
            f"--outage-s: expected MIN-MAX seconds such as 30-45, got {options['outage_s']!r}"
        ) from None
    try:
        return OutageSchedule(
            every_s=options["outage_every_s"],
            min_s=min_s,
            max_s=max_s,
            first_s=options["first_outage_s"],
            seed=options["seed"],
        )
    except ValueError as exc:
        raise CommandError(f"--outage-every-s/--outage-s/--first-outage-s: {exc}") from None


class Command(BaseCommand):
    help = "Migrate, load demo/breakwater.yaml, create the demo admin and serve."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-serve", action="store_true", help="prepare only")
        parser.add_argument(
            "--loadgen-rate", type=float, default=3.0, help="demo executions/s (0 = none)"
        )
        parser.add_argument(
            "--outage-every-s",
            type=float,
            default=240.0,
            help="one primary upstream goes down this often, in turn (0 = never; default 240)",
        )
        parser.add_argument(
            "--outage-s",
            default="30-45",
            help="how long an outage lasts: MIN-MAX seconds, drawn per outage (default 30-45)",
        )
        parser.add_argument(
            "--first-outage-s",
            type=float,
            default=90.0,
            help="seconds after start-up before the first outage (default 90)",
        )
        parser.add_argument(
            "--seed", type=int, default=12, help="seed of the demo traffic and outages (12)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        outages = _outages(options)  # bad flags are refused before anything is touched
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
        if outages is not None:
            self.stdout.write(
                f"  demo traffic {options['loadgen_rate']:g}/s; a primary upstream goes down "
                f"for {options['outage_s']} s every {options['outage_every_s']:g} s, "
                f"the first {options['first_outage_s']:g} s from now\n"
            )
        if not options["no_serve"]:
            serve = Serve()
            serve.demo = Demo(outages=outages, seed=options["seed"])
            call_command(
                serve,
                host=options["host"],
                port=options["port"],
                loadgen_rate=options["loadgen_rate"],
            )
