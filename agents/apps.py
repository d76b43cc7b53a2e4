from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.access.crypto import check_keys
        from agents.signals import connect_signals

        check_keys()  # a malformed BREAKWATER_ENCRYPTION_KEYS stops start-up, naming it
        connect_signals()
