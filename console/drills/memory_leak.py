"""Drill ``memory-leak``: the reference deployment's incident 3, "memory leak: gradual
performance degradation; solution: restart pods daily; lesson: monitor memory usage".

The drill needs what issue 13 part 7 adds to ``serve``: worker processes under a supervisor
(``serve --workers N``) that recycles one whose memory grows, the RSS gauge and growth detector
(``breakwater_process_resident_memory_bytes``, ``breakwater_memory_growth_bytes_per_second``)
and a way to inject an allocation growth in a worker. It asks the server's ``/metrics`` for
them; a deployment without them is reported as unsupported, naming what is missing, and the
drill stops there.
"""

from __future__ import annotations

from dataclasses import dataclass

from console.drills.client import DrillError
from console.drills.report import Report
from console.drills.setup import Setup

NEEDED_METRICS = (
    "breakwater_process_resident_memory_bytes",
    "breakwater_memory_growth_bytes_per_second",
    "breakwater_process_recycles_total",
)


class Unsupported(Exception):
    """The deployment cannot run this drill; the message says what it lacks."""


@dataclass(frozen=True)
class MemoryLeakOptions:
    seconds: float = 120.0
    rate: float = 5.0


async def run(setup: Setup, options: MemoryLeakOptions, *, template: str | None) -> Report:
    api = setup.api
    try:
        async with api.session.get(f"{api.base_url}/metrics") as response:
            text = await response.text() if response.status == 200 else ""
    except OSError as exc:
        raise DrillError(f"GET {api.base_url}/metrics: {exc}") from exc
    missing = [name for name in NEEDED_METRICS if name not in text]
    if missing:
        raise Unsupported(
            "the memory-leak drill needs `serve --workers N` (worker processes under a "
            "supervisor that recycles a leaking one) and the memory watch; this server's "
            f"/metrics has no {', '.join(missing)}"
        )
    raise Unsupported(
        "the memory-leak drill's leak injection is not built yet on this version; the server "
        "has the memory metrics, so watch breakwater_memory_growth_bytes_per_second meanwhile"
    )
