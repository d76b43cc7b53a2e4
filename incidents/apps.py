from __future__ import annotations

from django.apps import AppConfig


class IncidentsConfig(AppConfig):
    name = "incidents"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Deliveries go where queued work goes: a Celery worker, or the in-process one.
        from agents.backends import work_dispatch
        from incidents.notifications import dispatcher_install

        dispatcher_install(work_dispatch)
