"""The Celery app for distributed mode (`celery -A console worker` / `celery -A console beat`)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("breakwater")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_finalize.connect
def _install_schedule(sender: Celery, **_: object) -> None:
    """Beat runs the same schedule the embedded scheduler runs (console/schedule.py)."""
    from console.schedule import beat_schedule

    sender.conf.beat_schedule = beat_schedule()
