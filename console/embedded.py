"""The embedded scheduler: Celery beat's role, in-process, for the zero-setup mode.

:class:`EmbeddedScheduler` runs :data:`console.schedule.JOBS` on their intervals (what beat
does in distributed mode) on this process's :class:`core.worker.EmbeddedWorker`. A job never
overlaps itself; a failing job is logged and retried on its next tick. It stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from console.schedule import JOBS, Job
from core.worker import EmbeddedWorker

log = logging.getLogger("breakwater.embedded")


class EmbeddedScheduler:
    def __init__(
        self,
        *,
        worker: EmbeddedWorker,
        jobs: tuple[Job, ...] = JOBS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._worker = worker
        self._jobs = jobs
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, Future[Any]] = {}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="bw-scheduler")

    def tick(self, next_due: dict[str, float]) -> float:
        """Submit every due job that is not still running; return seconds until the next one."""
        now = self._clock()
        for job in self._jobs:
            if next_due[job.name] > now:
                continue
            running = self._running.get(job.name)
            if running is not None and not running.done():
                log.warning("job %s still running; skipping this tick", job.name)
            else:
                self._running[job.name] = self._worker.submit(job.task)
            next_due[job.name] = now + job.every_s
        return max(0.05, min(next_due.values()) - now) if next_due else 3600.0

    async def _loop(self) -> None:
        start = self._clock()
        # First runs are spread a little so start-up is not one burst of jobs.
        next_due = {job.name: start + min(5.0, job.every_s) for job in self._jobs}
        while True:  # noqa: ASYNC110 - a periodic loop, ended by cancel()
            await asyncio.sleep(self.tick(next_due))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
