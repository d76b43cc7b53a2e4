"""Settings for bench/metrics.py's ``nodb`` variant: the shipped settings without
django-prometheus' database wrapper (Django's own backend), to price that wrapper alone."""

from __future__ import annotations

from console.settings import *  # noqa: F403

DATABASES["default"]["ENGINE"] = {  # noqa: F405
    "django_prometheus.db.backends.sqlite3": "django.db.backends.sqlite3",
    "django_prometheus.db.backends.postgresql": "django.db.backends.postgresql",
}[DATABASES["default"]["ENGINE"]]  # noqa: F405
