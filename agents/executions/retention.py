"""Retention: raw executions older than ``BREAKWATER_RETENTION_DAYS`` are deleted in small batches.

What goes: finished ``Execution`` rows (succeeded, degraded, failed, cancelled) created before
the cutoff. Everything recorded of an execution is in its row (its ``steps`` hold the attempts,
retries, fallbacks, tool calls and cache look-up); no table references an execution by key.

What stays, whatever its age:

- queued and running executions (work that is not finished is never deleted);
- the ledger (``budgets.SpendEntry``: append-only, the truth for budgets and reconciliation),
  every rollup (``SpendRollup``, ``TrafficRollup``: the stats, charts and SLIs read them), the
  audit trail and the incidents. No incident timeline entry refers to an execution.

The cutoff never reaches into a day a rollup refresh still recomputes from raw rows: the daily
rollups recompute today and yesterday (UTC, ``budgets.rollups.rollups_rebuild``; the job
``rollups_advance`` leaves out any minute before this cutoff) and the traffic rollups the last
15 minutes, so the cutoff is at most the start of yesterday. A refresh
after retention therefore leaves every older rollup as it was (with the default 30 days the
clamp never applies; it matters for ``BREAKWATER_RETENTION_DAYS=1``).

Batches (docs/DECISIONS.md #24): each one is one short transaction that deletes the oldest
finished rows of the cutoff's side of the ``execution_time`` index, at most ``size`` of them
(``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent runs and the recorder's upserts never
wait on each other). The size adapts to keep a batch near ``BATCH_TARGET_S``; after each batch
the run pauses at least as long as the batch took (the writers, the recorder and autovacuum get
at least half of the time), and a run stops after ``budget_s``: the next run goes on from the
oldest row left. Every run is idempotent and safe to run concurrently with itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from agents.metrics import RETENTION_DELETED, RETENTION_OLDEST
from agents.models import Execution, ExecutionStatus
from core.audit import audit_record

log = logging.getLogger("breakwater.retention")

FINISHED = (
    ExecutionStatus.SUCCEEDED,
    ExecutionStatus.DEGRADED,
    ExecutionStatus.FAILED,
    ExecutionStatus.CANCELLED,
)
BATCH_TARGET_S = 0.25  # a batch's wall time the size adapts to: a short transaction
BATCH_MIN, BATCH_FIRST, BATCH_MAX = 100, 1000, 10_000
PAUSE_MIN_S = 0.05  # after every batch, at least this, and at least as long as the batch took
# Each batch is also bounded in time of creation: ``[lo, lo + span)``. The span adapts to hold
# about a batch of rows, so a batch never reads more than its window whatever plan the database
# picks (without statistics, PostgreSQL bitmap-scans the whole range and sorts it: a day of rows
# per batch).
SPAN_FIRST = timedelta(minutes=1)
SPAN_MIN, SPAN_MAX = timedelta(seconds=1), timedelta(days=1)
RUN_BUDGET_S = 60.0  # one scheduled run (every 300 s, console/schedule.py)
ROLLUP_RECOMPUTED_DAYS = 2  # today and yesterday: budgets.rollups.rollups_rebuild(days=2)


@dataclass(frozen=True)
class RetentionRun:
    cutoff: datetime  # executions created before it and finished are deleted
    deleted: int
    batches: int
    finished: bool  # nothing deletable was left before the cutoff when the run stopped
    oldest_kept: datetime | None  # the oldest execution left (None: none at all)
    elapsed_s: float


def retention_cutoff(*, now: datetime, days: int) -> datetime:
    """``now - days``, but never later than the start of the oldest day the daily rollup refresh
    still recomputes from raw rows (module doc)."""
    if days < 1:
        raise ValueError(f"days: {days} must be at least 1")
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    protected = today - timedelta(days=ROLLUP_RECOMPUTED_DAYS - 1)
    return min(now - timedelta(days=days), protected)


def _delete_batch(lo: datetime, hi: datetime, size: int) -> tuple[int, datetime | None]:
    """Delete up to ``size`` of the oldest finished executions created in ``[lo, hi)``; return
    how many and the newest ``created_at`` among them."""
    table = connection.ops.quote_name(Execution._meta.db_table)
    statuses = ", ".join(["%s"] * len(FINISHED))
    # SKIP LOCKED: a row another transaction holds (a concurrent run; the recorder rewriting
    # it) is left for the next run instead of waited for.
    lock = " FOR UPDATE SKIP LOCKED" if connection.vendor == "postgresql" else ""
    sql = (
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} "  # noqa: S608 - no user input
        f"WHERE created_at >= %s AND created_at < %s AND status IN ({statuses}) "
        f"ORDER BY created_at, id LIMIT %s{lock}) RETURNING created_at"
    )
    stamp = connection.ops.adapt_datetimefield_value  # SQLite stores naive UTC text
    params: list[Any] = [stamp(lo), stamp(hi), *[str(s) for s in FINISHED], size]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)
        stamps = [row[0] for row in cursor.fetchall()]
    if not stamps:
        return 0, None
    newest = max(stamps)
    if isinstance(newest, str):  # SQLite hands RETURNING's timestamps back as text
        newest = datetime.fromisoformat(newest)
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return len(stamps), newest


def oldest_execution_at(*, since: datetime | None = None) -> datetime | None:
    """The oldest ``created_at`` left (at or after ``since``): one seek on the ``execution_time``
    index."""
    executions = (
        Execution.objects.all()
        if since is None
        else Execution.objects.filter(created_at__gte=since)
    )
    return executions.order_by("created_at", "id").values_list("created_at", flat=True).first()


def executions_prune(
    *,
    now: datetime | None = None,
    days: int | None = None,
    budget_s: float | None = RUN_BUDGET_S,
    actor: str = "",
    reason: str = "",
    **batching: Any,
) -> RetentionRun:
    """Delete the finished executions older than ``days`` (``BREAKWATER_RETENTION_DAYS``) in
    batches (module doc) until none is left or ``budget_s`` is spent (None: until done). With an
    ``actor`` (an operator's run, not the scheduled policy) a run that deleted rows is audited.
    ``batching``: :func:`executions_delete_before`'s knobs (tests, the command's progress)."""
    days = settings.BREAKWATER_RETENTION_DAYS if days is None else days
    cutoff = retention_cutoff(now=now or timezone.now(), days=days)
    run = executions_delete_before(cutoff=cutoff, budget_s=budget_s, **batching)
    if run.deleted and actor:
        audit_record(
            actor=actor,
            action="executions_prune",
            target_type="execution",
            target_id=f"created_before:{cutoff.isoformat()}",
            after={
                "deleted": run.deleted,
                "days": days,
                "cutoff": cutoff,
                "finished": run.finished,
            },
            reason=reason,
        )
    return run


def executions_delete_before(
    *,
    cutoff: datetime,
    budget_s: float | None = RUN_BUDGET_S,
    batch_target_s: float = BATCH_TARGET_S,
    pause_min_s: float = PAUSE_MIN_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_batch: Callable[[int, int], None] | None = None,
) -> RetentionRun:
    """The batches of :func:`executions_prune` for an explicit ``cutoff`` (no clamp: callers
    other than ``executions_prune`` are benchmarks on their own data). ``on_batch(deleted,
    total)`` is told after each batch."""
    started = clock()
    size, span = BATCH_FIRST, SPAN_FIRST
    deleted = batches = 0
    lo = oldest_execution_at()
    while lo is not None and lo < cutoff:
        hi = min(lo + span, cutoff)
        t0 = clock()
        asked = size
        count, newest = _delete_batch(lo, hi, asked)
        took = clock() - t0
        if count:
            batches += 1
            deleted += count
            RETENTION_DELETED.inc(count)
            if on_batch is not None:
                on_batch(count, deleted)
        # Aim the size at the time target: grow while fast, shrink at once when slow.
        if took > batch_target_s:
            size = max(BATCH_MIN, int(size * batch_target_s / took))
        elif took < batch_target_s / 2 and count >= asked / 2:
            size = min(BATCH_MAX, size * 2)
        if newest is not None and count >= asked:
            # The window held more: go on from the newest row deleted (rows of that same
            # instant may be left), with a narrower window.
            lo, span = newest, max(span / 2, SPAN_MIN)
        else:
            if count < asked / 2:
                span = min(span * 2, SPAN_MAX)
            lo = oldest_execution_at(since=hi)  # past a gap in one seek
        if lo is None or lo >= cutoff:
            break
        if count:
            sleep(max(pause_min_s, took))
        if budget_s is not None and clock() - started >= budget_s:
            break
    finished = lo is None or lo >= cutoff
    oldest = oldest_execution_at()
    if oldest is not None:
        RETENTION_OLDEST.set(oldest.timestamp())
    run = RetentionRun(
        cutoff=cutoff,
        deleted=deleted,
        batches=batches,
        finished=finished,
        oldest_kept=oldest,
        elapsed_s=clock() - started,
    )
    if deleted:
        log.info(
            "retention: %d executions created before %s deleted in %d batches (%.1fs)%s",
            deleted,
            cutoff.isoformat(),
            batches,
            run.elapsed_s,
            "" if finished else "; more left for the next run",
        )
    return run
