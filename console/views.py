"""Health probes (the console's pages are in console/pages/)."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from agents import backends


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. No dependencies are checked (that is /readyz)."""
    return JsonResponse({"status": "ok"})


def _check_database() -> None:
    # Runs in an executor thread that no request signal ever cleans up: close the connection,
    # or a broken one (database restart) would keep failing this probe after the database is
    # back, and every executor thread would hold a connection open.
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()


async def _check_redis() -> None:
    from core.redis import get_async_redis

    await get_async_redis().ping()


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: the database answers, and Redis too in distributed mode; 503 otherwise."""
    timeout = settings.BREAKWATER_READYZ_TIMEOUT_S
    checks: dict[str, dict[str, object]] = {}

    async def run(name: str, probe: object) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(probe, timeout)  # type: ignore[arg-type]
        except TimeoutError:
            checks[name] = {"ok": False, "error": f"no answer within {timeout}s"}
        except Exception as exc:  # any failure means not ready; say which
            checks[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        else:
            checks[name] = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 2)}

    probes = [run("database", sync_to_async(_check_database, thread_sensitive=False)())]
    if not backends.embedded():
        probes.append(run("redis", _check_redis()))
    await asyncio.gather(*probes)
    ready = all(bool(check["ok"]) for check in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
