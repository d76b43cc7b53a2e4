"""Settings for bench/metrics.py's ``stock`` variant: the shipped settings with
django-prometheus' own middleware classes (``MiddlewareMixin``: on an async request each hook
runs through ``sync_to_async``) in place of console/django_metrics.py's inline ones."""

from __future__ import annotations

from console.settings import *  # noqa: F403

MIDDLEWARE = [
    name.replace("console.django_metrics.", "django_prometheus.middleware.")
    for name in MIDDLEWARE  # noqa: F405
]
