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

from django.conf import settings

from agents.executions.recording.drainer import DrainResult, RecordDrainer
from agents.executions.recording.files import FileJournal, drain_files_once, file_drain
from agents.executions.recording.streams import (
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
    "RedisJournal",
    "drain_files_once",
    "drain_redis_once",
    "ensure_group",
    "file_drain",
    "journal_directory",
    "prune_consumers",
    "redis_drain",
]


def journal_directory() -> Path:
    return Path(settings.VAR_DIR) / "journal"
