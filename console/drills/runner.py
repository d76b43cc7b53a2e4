"""Run a stored drill: claim it, run its scenario in a fresh event loop, keep its log current
in the database (the ``/drills/`` page polls it), store its figures and status."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone

from console.drills import cost_spike, memory_leak, outage
from console.drills.client import DrillError
from console.drills.memory_leak import Unsupported
from console.drills.report import Report
from console.drills.services import drill_finish, drill_update
from console.drills.setup import Setup
from console.models import DrillRun, DrillStatus

log = logging.getLogger("breakwater.drills")

Scenario = Callable[..., Awaitable[Report]]
SCENARIOS: dict[str, tuple[Scenario, type]] = {
    "outage": (outage.run, outage.OutageOptions),
    "cost-spike": (cost_spike.run, cost_spike.CostSpikeOptions),
    "memory-leak": (memory_leak.run, memory_leak.MemoryLeakOptions),
}
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# Options every drill takes; the rest are its own dataclass's fields.
COMMON = ("base_url", "agent")


def option_names(kind: str) -> set[str]:
    return {f.name for f in dataclasses.fields(SCENARIOS[kind][1])}


def scenario_options(kind: str, options: dict[str, Any]) -> Any:
    """The drill's options dataclass from stored options (unknown keys are refused)."""
    _, cls = SCENARIOS[kind]
    own = {k: v for k, v in options.items() if k not in COMMON}
    unknown = sorted(set(own) - option_names(kind))
    if unknown:
        raise ValueError(f"{kind}: unknown option(s) {', '.join(unknown)}")
    return cls(**own)


def drill_execute(
    *, drill_id: int, api_key: str | None = None, echo: Callable[[str], None] | None = None
) -> DrillRun:
    """Run queued drill ``drill_id`` (a second delivery of the same drill does nothing) with
    ``api_key`` (None: a temporary admin key of its own). ``echo`` gets each log line."""
    claimed = DrillRun.objects.filter(pk=drill_id, status=DrillStatus.QUEUED).update(
        status=DrillStatus.RUNNING, started_at=timezone.now()
    )
    drill = DrillRun.objects.get(pk=drill_id)
    if not claimed:
        return drill
    lines: list[str] = []

    def note(line: str) -> None:
        stamped = f"{datetime.now(tz=UTC).strftime('%H:%M:%S.%f')[:-3]} {line}"
        lines.append(stamped)
        if echo is not None:
            echo(stamped)

    status, figures, error = DrillStatus.ERROR, {}, ""
    try:
        report = asyncio.run(_run(drill, api_key, note, lines))
        figures = report.to_json()
        status = DrillStatus.PASSED if report.passed else DrillStatus.FAILED
    except Unsupported as exc:
        status, error = DrillStatus.UNSUPPORTED, str(exc)
        note(f"unsupported: {exc}")
    except (DrillError, ValueError) as exc:
        error = str(exc)
        note(f"error: {exc}")
    except Exception as exc:
        log.exception("drill %s failed", drill_id)
        error = f"{type(exc).__name__}: {exc}"
        note(f"error: {error}")
    except KeyboardInterrupt:  # Ctrl-C: the drill's clean-up has run (its `async with`)
        note("interrupted")
        drill_finish(
            drill_id=drill_id,
            status=DrillStatus.ERROR,
            figures={},
            log="\n".join(lines),
            error="interrupted",
        )
        raise
    drill_finish(
        drill_id=drill_id, status=status, figures=figures, log="\n".join(lines), error=error
    )
    drill.refresh_from_db()
    return drill


async def _run(
    drill: DrillRun, api_key: str | None, note: Callable[[str], None], lines: list[str]
) -> Report:
    scenario, _ = SCENARIOS[drill.kind]
    options = scenario_options(drill.kind, drill.options)
    base_url = str(drill.options.get("base_url") or DEFAULT_BASE_URL)
    template = drill.options.get("agent") or None
    note(f"drill {drill.pk} ({drill.kind}) against {base_url}")
    flusher = asyncio.get_running_loop().create_task(_flush(drill.pk, lines))
    started = time.monotonic()
    try:
        async with Setup(
            run_id=drill.pk, base_url=base_url, api_key=api_key, log=note, actor=_actor(drill)
        ) as setup:
            report = await scenario(setup, options, template=template)
        note(f"drill {drill.pk} done in {time.monotonic() - started:.1f} s")
        return report
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher


def _actor(drill: DrillRun) -> str:
    return f"drill:{drill.pk}"


async def _flush(drill_id: int, lines: list[str], every_s: float = 1.0) -> None:
    """Keep the stored log up to date while the drill runs."""
    written = 0
    while True:
        await asyncio.sleep(every_s)
        if len(lines) != written:
            written = len(lines)
            await sync_to_async(drill_update)(drill_id=drill_id, log="\n".join(lines))
