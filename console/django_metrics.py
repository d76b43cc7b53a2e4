"""Django-side metrics from django-prometheus (``django_http_*``, ``django_db_*``,
``django_cache_*``), exported by the one ``/metrics`` (console/metrics_view.py); see
docs/DECISIONS.md #16.

django-prometheus' metrics are plain prometheus_client objects in the default registry, so they
follow its multiprocess mode like ours. What is here adapts it to an ASGI deployment:

* **The two middlewares, without thread hops.** django-prometheus' middlewares are
  ``MiddlewareMixin`` ones: on an async request Django runs each of their ``process_request``,
  ``process_view`` and ``process_response`` through ``sync_to_async(thread_sensitive=True)``,
  five hops to the one sync thread per request for a few counter increments. The subclasses
  below run the same methods inline (they do no I/O). The lean execute doors
  (agents/doors, console/asgi.py) never reach Django's middleware, so they are not counted.
* **Cache backends that count gets** on Django's own backends: django-prometheus' Redis one
  needs django-redis (not a dependency), and its locmem one answers ``default`` for a cached
  falsy value (``cached or default``).

The database wrappers are django-prometheus' own (``django_prometheus.db.backends.*``), chosen
in settings. ``BREAKWATER_DJANGO_METRICS=0`` leaves all of it out.
"""

from __future__ import annotations

from typing import Any

from django.core.cache.backends.locmem import LocMemCache as DjangoLocMemCache
from django.core.cache.backends.redis import RedisCache as DjangoRedisCache
from django.http import HttpRequest, HttpResponse
from django_prometheus import middleware as prometheus_middleware
from django_prometheus.cache.metrics import (
    django_cache_get_fail_total,
    django_cache_get_total,
    django_cache_hits_total,
    django_cache_misses_total,
)
from django_prometheus.utils import Time

_MISSING = object()


class PrometheusBeforeMiddleware(prometheus_middleware.PrometheusBeforeMiddleware):  # type: ignore[misc]
    """First in ``MIDDLEWARE``: every request Django handles, and its latency through all of it."""

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        self.process_request(request)
        response = await self.get_response(request)
        return self.process_response(request, response)  # type: ignore[no-any-return]


class PrometheusAfterMiddleware(prometheus_middleware.PrometheusAfterMiddleware):  # type: ignore[misc]
    """Last in ``MIDDLEWARE``: requests and responses by view, method and status."""

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        self.process_request(request)
        response = await self.get_response(request)
        return self.process_response(request, response)  # type: ignore[no-any-return]

    def process_request(self, request: HttpRequest) -> None:
        try:
            super().process_request(request)
        except ValueError:
            # A malformed Content-Length (its body-size histogram): the route answers the
            # request as it would without metrics, and its latency is still measured.
            request.prometheus_after_middleware_event = Time()  # type: ignore[attr-defined]

    # Coroutines, so that Django's async handler awaits them instead of wrapping them in
    # sync_to_async (django.core.handlers.base.BaseHandler.adapt_method_mode).
    async def process_view(self, request: HttpRequest, view_func: Any, *args: Any) -> None:
        super().process_view(request, view_func, *args)

    async def process_template_response(self, request: HttpRequest, response: Any) -> Any:
        return super().process_template_response(request, response)


def _count_get(backend: str, value: Any) -> None:
    django_cache_get_total.labels(backend=backend).inc()
    if value is _MISSING:
        django_cache_misses_total.labels(backend=backend).inc()
    else:
        django_cache_hits_total.labels(backend=backend).inc()


class LocMemCache(DjangoLocMemCache):
    """Django's local-memory cache, counting gets (``backend="locmem"``)."""

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        value = super().get(key, _MISSING, version)
        _count_get("locmem", value)
        return default if value is _MISSING else value


class RedisCache(DjangoRedisCache):
    """Django's Redis cache, counting gets and failed gets (``backend="redis"``)."""

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        try:
            value = super().get(key, _MISSING, version)
        except Exception:
            django_cache_get_total.labels(backend="redis").inc()
            django_cache_get_fail_total.labels(backend="redis").inc()
            raise
        _count_get("redis", value)
        return default if value is _MISSING else value
