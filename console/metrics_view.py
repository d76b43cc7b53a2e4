"""``GET /metrics``: Prometheus exposition, merged across worker processes in multiprocess mode."""

from __future__ import annotations

import asyncio

from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from agents.metrics import cleanup_dead_processes, multiprocess_dir


def render_metrics(accept: str = "") -> tuple[bytes, str]:
    """The exposition body and its content type (OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(accept)
    directory = multiprocess_dir()
    if directory is None:
        return encoder(REGISTRY), content_type
    # A fresh registry per scrape (prometheus_client docs): the per-process metrics registered in
    # REGISTRY are already in the directory's files and must not be exported twice.
    cleanup_dead_processes(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return encoder(registry), content_type


@never_cache
@require_GET
async def metrics(request: HttpRequest) -> HttpResponse:
    # Merging the mmap files is file I/O; keep it off the event loop.
    body, content_type = await asyncio.to_thread(render_metrics, request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
