from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ConsoleConfig(AppConfig):
    name = "console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from console.login_throttle import connect_signals
        from core.db import on_post_migrate

        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="bw-append-only")
        connect_signals()
