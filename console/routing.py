"""Websocket routes (the live dashboard and execution streams arrive with the console issue)."""

from __future__ import annotations

from django.urls import URLPattern

websocket_urlpatterns: list[URLPattern] = []
