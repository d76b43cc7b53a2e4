from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from agents.config.export import config_export_yaml


class Command(BaseCommand):
    help = "Print providers, models, agents and budgets in the format `apply` reads."

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(config_export_yaml(), ending="")
