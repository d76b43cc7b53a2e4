from __future__ import annotations

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ConsoleConfig(AppConfig):
    name = "console"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from console.login_throttle import connect_signals
        from console.roles import grant_admin_permissions
        from core.db import on_post_migrate

        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="bw-append-only")
        # Every app's post_migrate (permissions are created per app): the last one sees them all.
        post_migrate.connect(grant_admin_permissions, dispatch_uid="bw-admin-permissions")
        connect_signals()
