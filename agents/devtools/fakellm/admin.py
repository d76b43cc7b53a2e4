"""The admin API under ``/_admin/``: read and change the faults, reset, stats, recent requests."""

from __future__ import annotations

import json

from aiohttp import web

from agents.devtools.fakellm.faults import FaultConfig, FaultConfigError
from agents.devtools.fakellm.state import STATE, _json


def _admin_error(exc: FaultConfigError) -> web.Response:
    return _json(
        {
            "error": {
                "type": "invalid_request_error",
                "message": str(exc),
                "field": exc.field,
            }
        },
        status=400,
    )


async def get_faults(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].faults.config.to_dict())


async def set_faults(request: web.Request) -> web.StreamResponse:
    """PUT replaces the whole configuration (missing fields take defaults); POST merges.

    The random source is reseeded on PUT, and on POST when the body names ``seed``.
    """
    faults = request.app[STATE].faults
    try:
        data = json.loads(await request.read() or b"{}")
    except ValueError:
        return _admin_error(FaultConfigError("body", "not valid JSON"))
    replace = request.method == "PUT"
    try:
        config = FaultConfig.from_mapping(data, base=None if replace else faults.config)
    except FaultConfigError as exc:
        return _admin_error(exc)
    faults.set_config(config, reseed=replace or "seed" in data)
    return _json(config.to_dict())


async def reset(request: web.Request) -> web.StreamResponse:
    """Back to the start-up faults, reseeded; stats and the request log emptied."""
    state = request.app[STATE]
    state.reset()
    return _json({"faults": state.faults.config.to_dict(), "stats": state.stats.to_dict()})


async def get_stats(request: web.Request) -> web.StreamResponse:
    return _json(request.app[STATE].stats.to_dict())


async def get_requests(request: web.Request) -> web.StreamResponse:
    """The most recent generation requests, newest last (``?limit=N``, at most 100)."""
    items = list(request.app[STATE].requests)
    raw = request.query.get("limit")
    if raw is not None:
        try:
            limit = int(raw)
            if limit < 0:
                raise ValueError
        except ValueError:
            return _admin_error(FaultConfigError("limit", "must be an integer >= 0"))
        items = items[len(items) - limit :] if limit else []
    return _json({"items": items})
