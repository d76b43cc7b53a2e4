"""The embedded worker and scheduler: Celery's roles, in-process, for the zero-setup mode.

* :class:`EmbeddedScheduler` runs :data:`console.schedule.JOBS` on their intervals (what beat
  does in distributed mode). A job never overlaps itself; a failing job is logged and retried
  on its next tick.
* :class:`EmbeddedWorker` runs Celery task bodies on a small thread pool (what ``celery
  worker`` does in distributed mode). Work handed to it is also recorded in the database by the
  caller first, so a process that dies loses nothing: the recovery scan picks it up again.

Both stop cleanly: no new work is taken, running work gets ``grace_s`` to finish.

The most recently started worker is this process's worker (:func:`current_worker`): code that
enqueues work in embedded mode (``agents.executions.execution_dispatch``) hands it there. A worker
remembers the event loop it was created in (``serve``'s), so a task body that needs the serving
loop's engine and channel layer can run its coroutine there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import current_app
from django.db import close_old_connections

from console.schedule import JOBS, Job

log = logging.getLogger("breakwater.embedded")


def _run_task(name: str, kwargs: dict[str, Any]) -> Any:
    """Run a Celery task's body in this thread with fresh database connections."""
    close_old_connections()
    try:
        return current_app.tasks[name](**kwargs)
    finally:
        close_old_connections()


_current: EmbeddedWorker | None = None


def current_worker() -> EmbeddedWorker | None:
    """This process's running embedded worker (the last one started and not stopped), if any."""
    return _current


class EmbeddedWorker:
    def __init__(self, *, threads: int = 4, grace_s: float = 10.0) -> None:
        # Import every app's tasks module, as `celery worker` does at start-up: autodiscovery
        # is lazy, so without this no `<app>.tasks` task is registered in this process and
        # every scheduled job fails with NotRegistered. (Not loader.import_default_modules():
        # it runs django.setup() again, which reconfigures logging, and the system checks.)
        current_app.autodiscover_tasks(force=True)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="bw-worker")
        self._grace_s = grace_s
        self._pending: set[Future[Any]] = set()
        self._closed = False
        try:
            self.loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None
        global _current
        _current = self

    def submit(self, name: str, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("embedded worker is shut down")
        future = self._pool.submit(_run_task, name, kwargs)
        self._pending.add(future)
        future.add_done_callback(self._done(name))
        return future

    def _done(self, name: str) -> Callable[[Future[Any]], None]:
        def callback(future: Future[Any]) -> None:
            self._pending.discard(future)
            if not future.cancelled() and future.exception() is not None:
                log.error("task %s failed", name, exc_info=future.exception())

        return callback

    async def stop(self) -> None:
        global _current
        self._closed = True
        if _current is self:
            _current = None
        pending = [asyncio.wrap_future(f) for f in list(self._pending)]
        if pending:
            log.info("waiting up to %.0fs for %d task(s)", self._grace_s, len(pending))
            await asyncio.wait(pending, timeout=self._grace_s)
        self._pool.shutdown(wait=False, cancel_futures=True)


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
