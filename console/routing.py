"""Websocket routes (wrapped by session auth and the origin check in console/asgi.py)."""

from __future__ import annotations

from django.urls import URLPattern, path

from agents.doors.consumers import ExecutionConsumer
from console.consumers import DashboardConsumer

websocket_urlpatterns: list[URLPattern] = [
    path("ws/dashboard/", DashboardConsumer.as_asgi()),
    path("ws/executions/<uuid:execution_id>/", ExecutionConsumer.as_asgi()),
]
