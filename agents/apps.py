from __future__ import annotations

from django.apps import AppConfig


class AgentsConfig(AppConfig):
    name = "agents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from agents.crypto import check_keys
        from agents.live_config import connect_signals
        from agents.signals import connect_signals as connect_delete_guards

        check_keys()  # a malformed BREAKWATER_ENCRYPTION_KEYS stops start-up, naming it
        connect_signals()
        connect_delete_guards()
