"""``manage.py drill outage|cost-spike|memory-leak [--agent A]``: replay one of the reference
deployment's incidents against a running deployment and print what its safeguards did."""

from __future__ import annotations

import json
import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from console.drills.report import table
from console.drills.runner import DEFAULT_BASE_URL, SCENARIOS, drill_execute, option_names
from console.drills.services import drill_create
from console.models import DrillStatus

# flag -> (option, type, help); a drill takes the ones its options name.
FLAGS: dict[str, tuple[str, type, str]] = {
    "--seconds": (
        "seconds",
        float,
        "outage: how long the primary is down (45); cost-spike: "
        "the longest the runaway loop runs before the budget stops it (60); memory-leak: the "
        "longest wait, from the injection, for the detection and the recycle (120)",
    ),
    "--warmup-s": ("warmup_s", float, "normal traffic before the fault (5)"),
    "--rate": (
        "rate",
        float,
        "requests/s offered (outage 5, cost-spike 2 before the spike, memory-leak 5)",
    ),
    "--spike-rate": ("spike_rate", float, "cost-spike: requests/s of the runaway loop (10)"),
    "--budget-usd": ("budget_usd", float, "cost-spike: the drill agent's daily budget (0.50)"),
    "--recovery-wait-s": (
        "recovery_wait_s",
        float,
        "outage: the longest wait for the breaker to close after recovery (90)",
    ),
    "--leak-mb-per-s": (
        "leak_mb_per_s",
        float,
        "memory-leak: the leak's growth in MiB/s (default: reach the worker's --max-rss-mb "
        "about one and a half detector windows after the injection)",
    ),
    "--incident-wait-s": (
        "incident_wait_s",
        float,
        "cost-spike: the longest wait for the budget's incident (30)",
    ),
}


class Command(BaseCommand):
    help = (
        "Replay one of the reference deployment's incidents (outage, cost-spike, memory-leak) "
        "against a running deployment with fakellm upstreams of the drill's own, and print "
        "what the safeguards did. Exit status 0: every check held; 1: a check failed or the "
        "drill could not run; 2: the deployment cannot run this drill."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("kind", choices=sorted(SCENARIOS))
        parser.add_argument(
            "--agent", default=None, help="copy this agent's safeguards into the drill agent"
        )
        parser.add_argument(
            "--url",
            default=settings.BREAKWATER_DRILL_URL or DEFAULT_BASE_URL,
            help=f"the running deployment (BREAKWATER_DRILL_URL, default {DEFAULT_BASE_URL})",
        )
        parser.add_argument(
            "--api-key",
            default=os.environ.get("BREAKWATER_DRILL_API_KEY"),
            help="an admin key (BREAKWATER_DRILL_API_KEY; default: a temporary key the drill "
            "creates in this deployment's database and revokes at the end)",
        )
        for flag, (dest, kind, text) in FLAGS.items():
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
        parser.add_argument("--json", action="store_true", help="print the figures as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        kind = options["kind"]
        allowed = option_names(kind)
        given = {dest: options[dest] for dest, _, _ in FLAGS.values() if options[dest] is not None}
        for flag, (dest, _, _) in FLAGS.items():
            if dest in given and dest not in allowed:
                raise CommandError(f"{flag}: the {kind} drill has no such setting")
            if dest in given and given[dest] < 0:
                raise CommandError(f"{flag}: must be >= 0, got {given[dest]:g}")
        for flag in ("--rate", "--spike-rate", "--budget-usd", "--seconds"):
            dest = FLAGS[flag][0]
            if given.get(dest) == 0:
                raise CommandError(f"{flag}: must be > 0")
        url = str(options["url"]).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise CommandError(f"--url: expected http(s)://host:port, got {url!r}")
        drill = drill_create(
            kind=kind,
            options={"base_url": url, "agent": options["agent"] or "", **given},
            actor="system:drill",
        )
        done = drill_execute(
            drill_id=drill.pk,
            api_key=options["api_key"] or None,
            echo=None if options["json"] else lambda line: self.stderr.write(line),
        )
        if options["json"]:
            self.stdout.write(
                json.dumps(
                    {
                        "id": done.pk,
                        "kind": kind,
                        "status": done.status,
                        "error": done.error,
                        "figures": done.figures,
                    },
                    indent=2,
                )
            )
        else:
            self.stdout.write(f"\nDrill {done.pk}: {kind} against {url}: {done.status}\n")
            if done.figures:
                self.stdout.write(table(done.figures))
            if done.error:
                self.stdout.write(f"\n{done.error}")
        if done.status == DrillStatus.UNSUPPORTED:
            raise SystemExit(2)
        if done.status != DrillStatus.PASSED:
            raise SystemExit(1)
