"""Durable write-behind recording of executions (the runtime's ``RecordSink``).

The hot path appends an event to a journal and returns; a drainer moves batches of events into
``Execution`` later, at least once and idempotently. Two journals, one per deployment mode:

* embedded: :class:`FileJournal` (a per-process append-only file) + :func:`drain_files_once`;
* distributed: :class:`RedisJournal` (a Redis stream) + :func:`drain_redis_once`.

:class:`RecordDrainer` runs either drain in the serve process; ``manage.py drain_records`` runs
it on its own. Design, guarantees and figures: docs/RECORDING.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from django.conf import settings

from agents.recording.drainer import DrainResult, RecordDrainer
from agents.recording.files import FileJournal, drain_files_once, file_drain
from agents.recording.streams import (
    GROUP,
    STREAM,
    RedisJournal,
    drain_redis_once,
    ensure_group,
    prune_consumers,
    redis_drain,
)

__all__ = [
    "GROUP",
    "STREAM",
    "DrainResult",
    "FileJournal",
    "RecordDrainer",
    "Recorder",
    "RedisJournal",
    "drain_files_once",
    "drain_redis_once",
    "ensure_group",
    "file_drain",
    "journal_directory",
    "prune_consumers",
    "recorder_for_settings",
    "redis_drain",
]


class Recorder(NamedTuple):
    sink: FileJournal | RedisJournal
    drainer: RecordDrainer


def journal_directory() -> Path:
    return Path(settings.VAR_DIR) / "journal"


def recorder_for_settings(*, owner: str = "") -> Recorder:
    """The sink and drainer for this deployment mode. Call it inside the running event loop
    (the Redis client belongs to the loop); then ``drainer.start()``, and at shutdown
    ``await drainer.stop()`` (a final drain) before closing the sink. ``owner``: this process's
    identity (``agents.processes``), written on every ``started`` event.
    """
    if settings.EMBEDDED:
        directory = journal_directory()
        return Recorder(FileJournal(directory, owner=owner), RecordDrainer(file_drain(directory)))
    from console.redis import get_async_redis, get_async_wire

    return Recorder(
        RedisJournal(get_async_wire(), owner=owner), RecordDrainer(redis_drain(get_async_redis()))
    )
