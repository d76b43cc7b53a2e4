"""The embedded worker: Celery's worker role, in-process, for the zero-setup mode.

:class:`EmbeddedWorker` runs Celery task bodies on a small thread pool (what ``celery worker``
does in distributed mode). Work handed to it is also recorded in the database by the caller
first, so a process that dies loses nothing: the recovery scan picks it up again. It stops
cleanly: no new work is taken, running work gets ``grace_s`` to finish.

The most recently started worker is this process's worker (:func:`current_worker`): the
backends hand embedded-mode work there (``agents.backends.work_dispatch``). A worker remembers
the event loop it was created in (``serve``'s), so a task body that needs the serving loop's
engine and channel layer can run its coroutine there. The scheduler that feeds it periodic jobs
is ``console.embedded``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import current_app
from django.db import close_old_connections

log = logging.getLogger("breakwater.worker")


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
