"""The memory-leak drill's lever (docs/INTERFACES.md §4): what the serving process that answers
knows about its own memory, and an allocation growth injected into it, or stopped.

``GET /api/v1/drills/memory`` · ``POST /api/v1/drills/memory/leak`` ·
``DELETE /api/v1/drills/memory/leak``. Each acts on the one process that answers the request
(under ``serve --workers N``, whichever worker accepted the connection): the answer names its
pid, so the drill knows which worker it made leak. ``admin`` scope from a key not restricted to
some agents; start and stop are audited (``process_leak_start`` / ``process_leak_stop``, target
``process`` ``<host>:<pid>``).

A leak is bounded: at most :data:`core.memory.LEAK_MAX_BYTES_PER_S`, and it stops growing at
``max_bytes`` (1 GiB unless given) whatever happens, so a drill against a deployment that does
not recycle does not take the host down. It ends with the process (a recycle) or with DELETE.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from ninja import Field, Router, Schema

from agents.access.auth import PermissionDenied, Principal
from agents.doors.auth import ApiKeyAuth
from agents.schemas import ERRORS, StrictSchema
from core.audit import audit_record
from core.memory import (
    LEAK_DEFAULT_MAX_BYTES,
    LEAK_MAX_BYTES_PER_S,
    MB,
    current_watch,
    leak_start,
    leak_status,
    leak_stop,
    rss_bytes,
)

router = Router(auth=ApiKeyAuth(), tags=["drills"])

LEAK_MAX_TOTAL_BYTES = 64 * 1024 * MB


class MemoryWatchOut(Schema):
    role: str = Field(description='The process role ("serve", ...).')
    sample_s: float
    window_s: float
    warmup_s: float
    growth_bytes_per_s: float = Field(description="The detector's threshold (0: off).")
    limit_bytes: int = Field(description="The detector's RSS limit (0: none).")
    uptime_s: float = Field(description="Seconds since the watch started (warm-up counts here).")
    slope_bytes_per_s: float | None = Field(description="The last fitted slope (null: none yet).")
    firing: bool


class LeakOut(Schema):
    bytes_per_second: float = Field(description="0 when no leak runs (or it reached its cap).")
    held_bytes: int
    max_bytes: int = Field(description="Where the leak stops growing (0: no leak).")


class ProcessMemoryOut(Schema):
    pid: int
    host: str
    rss_bytes: int
    supervised: bool = Field(description="A worker of `serve --workers` (its supervisor recycles).")
    recycle_rss_bytes: int = Field(
        description="The RSS past which its supervisor recycles it (`--max-rss-mb`; 0: never)."
    )
    watch: MemoryWatchOut | None = Field(description="Its memory watch (null: none runs here).")
    leak: LeakOut
    freed_bytes: int | None = Field(default=None, description="DELETE: what the leak held.")


class LeakIn(StrictSchema):
    bytes_per_second: float = Field(
        gt=0,
        le=LEAK_MAX_BYTES_PER_S,
        description=f"Growth to inject, > 0 and at most {LEAK_MAX_BYTES_PER_S} (100 MiB/s).",
    )
    max_bytes: int = Field(
        default=LEAK_DEFAULT_MAX_BYTES,
        gt=0,
        le=LEAK_MAX_TOTAL_BYTES,
        description="The leak stops growing once it holds this much (default 1 GiB, at most 64 GiB).",
    )


def _admin(request: HttpRequest) -> Principal:
    principal: Principal = request.auth  # type: ignore[attr-defined]
    principal.require("admin")
    if principal.agents:
        raise PermissionDenied("a key restricted to some agents cannot inject faults in a process")
    return principal


def _state(freed: int | None = None) -> dict[str, Any]:
    watch = current_watch()
    rate, held, cap = leak_status()
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "rss_bytes": rss_bytes(),
        "supervised": bool(watch and watch.supervised),
        "recycle_rss_bytes": watch.recycle_rss_bytes if watch else 0,
        "watch": None,
        "leak": {"bytes_per_second": rate, "held_bytes": held, "max_bytes": cap},
        "freed_bytes": freed,
    }
    if watch is not None:
        s = watch.detector.settings
        out["watch"] = {
            "role": watch.role,
            "sample_s": watch.every_s,
            "window_s": s.window_s,
            "warmup_s": s.warmup_s,
            "growth_bytes_per_s": s.growth_bytes_per_s,
            "limit_bytes": s.limit_bytes,
            "uptime_s": round(watch.uptime_s, 3),
            "slope_bytes_per_s": watch.last.slope if watch.last else None,
            "firing": watch.detector.firing,
        }
    return out


def _target() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@router.get(
    "/drills/memory",
    response={200: ProcessMemoryOut, **ERRORS},
    summary="This serving process's memory (for the memory-leak drill)",
)
def drill_memory(request: HttpRequest) -> dict[str, Any]:
    """The process that answers: its pid, RSS, whether it is recycled and past what, its memory
    watch's settings and verdict, and the drill leak running in it (if any)."""
    _admin(request)
    return _state()


@router.post(
    "/drills/memory/leak",
    response={200: ProcessMemoryOut, **ERRORS},
    summary="Inject a memory leak in the process that answers (memory-leak drill)",
)
async def drill_memory_leak_start(request: HttpRequest, body: LeakIn) -> dict[str, Any]:
    """Start allocating ``bytes_per_second`` of resident memory in this process, kept until it
    is recycled or the leak is stopped, and at most ``max_bytes``. Replaces a leak already
    running here (what it held is kept). Audited."""
    principal = _admin(request)
    leak_start(body.bytes_per_second, max_bytes=body.max_bytes)
    state = _state()
    await sync_to_async(audit_record)(
        actor=f"apikey:{principal.prefix}",
        action="process_leak_start",
        target_type="process",
        target_id=_target(),
        after={
            "bytes_per_second": body.bytes_per_second,
            "max_bytes": body.max_bytes,
            "rss_bytes": state["rss_bytes"],
        },
    )
    return state


@router.delete(
    "/drills/memory/leak",
    response={200: ProcessMemoryOut, **ERRORS},
    summary="Stop the drill leak in the process that answers, and free it",
)
async def drill_memory_leak_stop(request: HttpRequest) -> dict[str, Any]:
    """Stop the leak in this process (if one runs) and free what it held (``freed_bytes``).
    Another worker's leak is untouched: the answer's pid says which process this was."""
    principal = _admin(request)
    rate, held, _ = leak_status()
    freed = leak_stop()
    if rate or held:
        await sync_to_async(audit_record)(
            actor=f"apikey:{principal.prefix}",
            action="process_leak_stop",
            target_type="process",
            target_id=_target(),
            before={"bytes_per_second": rate, "held_bytes": held},
        )
    return _state(freed)
