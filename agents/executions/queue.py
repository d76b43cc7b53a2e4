"""Writes for execution rows: queued (async) executions from enqueue to settlement, cancel,
and the recovery of rows a lost message left behind (docs/ASYNC.md). Running one is
:mod:`agents.executions.runner`; the rows of dead processes are :mod:`agents.executions.settle`."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from agents.backends import cancel_flags, journal_drain, work_dispatch
from agents.executions.live import publish
from agents.executions.processes import process_owner_id
from agents.executions.recording.events import encode_finished, row_from_event
from agents.executions.recording.store import store_rows
from agents.models import DEFAULT_QUEUE, Agent, Execution, ExecutionStatus
from agents.selectors import execution_out
from core.errors import Conflict, NotFound
from core.redis import close_loop_clients

log = logging.getLogger("breakwater.executions")

# --- queued executions ----------------------------------------------------------------------
#
# POST /agents/{name}/executions writes a ``queued`` row and, after commit, hands its id to a
# worker (Celery in distributed mode, the in-process worker in embedded mode). The worker claims
# the row with one conditional UPDATE, runs it on an engine, settles the row and the ledger
# itself, then pushes ``completed`` to the execution's websocket group.

EXECUTION_TASK = "agents.tasks.execution_run"
FINAL_STATUSES = frozenset({"succeeded", "degraded", "failed", "cancelled"})
WATCHDOG_MARGIN_S = 5.0  # the runner's own backstop past the agent's deadline
SOFT_LIMIT_MARGIN_S = 15.0  # Celery soft time limit: agent timeout + this
HARD_LIMIT_MARGIN_S = 30.0  # Celery hard time limit: agent timeout + this
CANCEL_POLL_S = 0.25


def _retry_locked(fn: Any) -> Any:
    """Call ``fn()``; retry briefly while SQLite answers "database table is locked".

    SQLite in shared-cache mode (the test database; a file database under a write burst past
    its busy timeout) reports a concurrent writer as an immediate error instead of waiting.
    The writes retried here are conditional or idempotent, so running one again is safe.
    """

    for attempt in range(80):
        try:
            return fn()
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == 79:
                raise
            time.sleep(0.025)
    raise AssertionError("unreachable")


def execution_claim_grace_s() -> float:
    """A ``running`` claim older than the agent's timeout plus this belongs to a dead delivery.
    It must exceed ``HARD_LIMIT_MARGIN_S``: by then Celery has killed any live owner."""

    return float(settings.BREAKWATER_EXECUTION_CLAIM_GRACE_S)


def execution_time_limits(timeout_s: float) -> tuple[float, float]:
    """Celery's (soft, hard) time limits for an execution of an agent with ``timeout_s``."""
    return timeout_s + SOFT_LIMIT_MARGIN_S, timeout_s + HARD_LIMIT_MARGIN_S


def execution_queue_name(agent_queue: str | None) -> str:
    """The Celery queue of an agent whose config says ``queue: agent_queue``: ``default`` (or
    nothing) is the deployment's execution queue, ``BREAKWATER_EXECUTION_QUEUE``; any other
    name is the Celery queue of that name (docs/SCALING.md, "Per-agent pools")."""
    if not agent_queue or agent_queue == DEFAULT_QUEUE:
        return str(settings.BREAKWATER_EXECUTION_QUEUE)
    return agent_queue


def agents_dispatch_targets() -> dict[str, tuple[float, str]]:
    """Every agent's (timeout_s, Celery queue), for the recovery jobs that dispatch again."""
    return {
        name: (float(timeout_s), execution_queue_name(queue))
        for name, timeout_s, queue in Agent.objects.values_list("name", "timeout_s", "queue")
    }


def execution_enqueue(
    *,
    agent: str,
    timeout_s: float,
    messages: list[dict[str, str]],
    queue: str = DEFAULT_QUEUE,
    session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    bypass_cache: bool = False,
    api_key_id: int | None = None,
) -> str:
    """Write a ``queued`` execution and dispatch it once the transaction commits, to the
    Celery queue of the agent's ``queue`` (:func:`execution_queue_name`).

    ``max_tokens`` travels in the task message and is kept on the row (a requeued execution
    keeps it); ``bypass_cache`` has no column: it travels in the message only.
    """

    with transaction.atomic():
        row = Execution.objects.create(
            agent_name=agent,
            api_key_id=api_key_id,
            status=ExecutionStatus.QUEUED,
            queued_at=timezone.now(),
            input=list(messages),
            session_id=session_id or "",
            metadata=dict(metadata or {}),
            max_tokens=max_tokens,
        )
        transaction.on_commit(
            partial(
                execution_dispatch,
                execution_id=str(row.pk),
                timeout_s=timeout_s,
                max_tokens=max_tokens,
                bypass_cache=bypass_cache,
                queue=execution_queue_name(queue),
            )
        )
    return str(row.pk)


def execution_dispatch(
    *,
    execution_id: str,
    timeout_s: float,
    countdown: float = 0.0,
    max_tokens: int | None = None,
    bypass_cache: bool = False,
    queue: str | None = None,
) -> None:
    """Hand an execution to a worker (``agents.backends.work_dispatch``): a Celery message on
    the Celery queue ``queue`` (default ``BREAKWATER_EXECUTION_QUEUE``) with time limits from
    the agent's timeout, or the in-process worker in embedded mode, which runs every queue's
    work."""
    kwargs: dict[str, Any] = {"execution_id": execution_id}
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if bypass_cache:
        kwargs["bypass_cache"] = True
    soft, hard = execution_time_limits(timeout_s)
    work_dispatch(
        EXECUTION_TASK,
        kwargs,
        queue=queue or settings.BREAKWATER_EXECUTION_QUEUE,
        countdown=countdown,
        soft_time_limit=soft,
        time_limit=hard,
    )


@dataclass(frozen=True)
class ExecutionClaim:
    outcome: str  # claimed | finished | busy | missing
    execution: Any = None  # the claimed Execution row
    timeout_s: float = 0.0
    wait_s: float = 0.0  # busy: until the current claim goes stale
    reclaimed: bool = False  # claimed from a dead delivery
    # reclaimed: the row as that delivery left it (its owner, claim time, reservation), whose
    # attempt is to be charged (``agents.executions.settle.execution_attempt_abandoned``)
    abandoned: Any = None


def execution_claim(*, execution_id: str, now: datetime | None = None) -> ExecutionClaim:
    """Claim a queued execution for this delivery, or a running one whose delivery died.

    One conditional UPDATE moves the row to ``running`` and stamps ``started_at`` with the claim
    time (``created_at`` stays the time it was accepted: the rollups and the explorer go by it);
    it matches ``queued``, or ``running`` with a claim older than the agent's timeout plus
    :func:`execution_claim_grace_s` (no live delivery runs that long: the executor's deadline,
    the runner's watchdog and Celery's hard time limit all end it first). It must change exactly
    one row: concurrent deliveries race on it and all but one change nothing. Before taking over
    a dead delivery's execution the journal is drained once, so a result that delivery recorded
    just before dying is stored, and found final, instead of being run again; the dead
    delivery's attempt is then charged by the runner (``abandoned``). Outcomes:

    * ``claimed``: run it;
    * ``finished`` / ``missing``: nothing to do (a redelivered message, a cancelled execution);
    * ``busy``: another delivery holds a fresh claim; look again after ``wait_s``.
    """
    return _retry_locked(lambda: _claim(execution_id, now))  # type: ignore[no-any-return]


def _claim(execution_id: str, now: datetime | None) -> ExecutionClaim:

    now = now or timezone.now()
    row = Execution.objects.filter(pk=execution_id).only(
        "agent_name", "status", "created_at", "started_at", "owner", "reserved_usd", "api_key_id"
    )
    current = row.first()
    if current is None:
        return ExecutionClaim("missing")
    timeout_s = float(
        Agent.objects.filter(name=current.agent_name).values_list("timeout_s", flat=True).first()
        or 3600.0
    )
    stale_after = timedelta(seconds=timeout_s + execution_claim_grace_s())
    if current.status in FINAL_STATUSES:
        return ExecutionClaim("finished", timeout_s=timeout_s)
    stale = current.status == ExecutionStatus.RUNNING and _claimed_before(
        current, now - stale_after
    )
    if stale:
        journal_drain_once()

    changed = (
        Execution.objects.filter(pk=execution_id)
        .filter(
            Q(status=ExecutionStatus.QUEUED)
            | Q(status=ExecutionStatus.RUNNING, started_at__lt=now - stale_after)
            | Q(status=ExecutionStatus.RUNNING, started_at__isnull=True)
        )
        .update(status=ExecutionStatus.RUNNING, started_at=now, owner=process_owner_id("worker"))
    )
    if changed == 1:
        claimed = Execution.objects.select_related("api_key").get(pk=execution_id)
        return ExecutionClaim(
            "claimed", claimed, timeout_s, reclaimed=stale, abandoned=current if stale else None
        )
    current = row.first()
    if current is None:
        return ExecutionClaim("missing")
    if current.status in FINAL_STATUSES:
        return ExecutionClaim("finished", timeout_s=timeout_s)
    wait = ((current.started_at or now) + stale_after - now).total_seconds()
    return ExecutionClaim("busy", timeout_s=timeout_s, wait_s=max(0.2, wait + 0.05))


def _claimed_before(row: Execution, cutoff: datetime) -> bool:
    """A running row without a start time has no live claim (agents migration 0012 gave every
    running row one; nothing writes ``running`` without it since)."""
    return row.started_at is None or row.started_at < cutoff


def journal_drain_once() -> None:
    """Store what the journal holds now (this process's drain of either journal), from sync
    code without a running loop."""

    async def drain() -> None:
        try:
            await journal_drain()()
        finally:
            await close_loop_clients()

    try:
        asyncio.run(drain())
    except Exception:  # the claim stays safe: the ledger is unique per execution anyway
        log.warning("draining the journal before a reclaim failed", exc_info=True)


def execution_release(*, execution_id: str, claimed_at: datetime) -> bool:
    """Give a claim back (an infrastructure error before the run started): ``queued`` again,
    only if the claim is still ours (``claimed_at``: the claim's ``started_at``)."""

    rows = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, started_at=claimed_at
    )
    changed: int = _retry_locked(
        lambda: rows.update(status=ExecutionStatus.QUEUED, started_at=None)
    )
    return changed == 1


def execution_settle(*, result: Any) -> dict[str, Any]:
    """Store a finished execution and its ledger entry now, exactly as the journal drainer
    does (the same function, so the drainer's later copy of the event changes nothing), and
    return the stored execution as the API shows it."""

    rows = [(0, row_from_event(encode_finished(result)))]
    outcome = _retry_locked(lambda: store_rows(rows))
    if outcome.rejected:
        log.error("execution %s could not be stored: %s", result.execution_id, outcome.rejected)
    return execution_out(_retry_locked(lambda: Execution.objects.get(pk=result.execution_id)))


def execution_fail(*, execution_id: str, error: dict[str, str]) -> dict[str, Any] | None:
    """Fail a ``running`` execution whose run ended without a result (Celery's soft time
    limit). Returns the stored execution, or None if it was no longer running."""

    changed = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.FAILED, finished_at=timezone.now(), error=error
    )
    return execution_out(Execution.objects.get(pk=execution_id)) if changed else None


@dataclass(frozen=True)
class CancelOutcome:
    execution_id: str
    status: str
    cancel_requested: bool  # a running execution was asked to stop; it ends ``cancelled``


def execution_cancel(
    *, execution_id: str, key_id: int, operator_agents: frozenset[str] | None
) -> CancelOutcome:
    """Cancel an execution the key made (or, for ``operator_agents``, one of those agents';
    an empty set means every agent; None means own executions only).

    ``queued``: cancelled at once (a conditional UPDATE; the worker that later receives it finds
    it final and does nothing), ``completed`` is pushed after commit. ``running``: a cancel
    flag for the runner, which stops the run within ``CANCEL_POLL_S`` and settles it
    ``cancelled`` with what it cost so far. Already ``cancelled``: the same answer again. Any
    other final status is a conflict. Unknown or not the key's: :class:`NotFound`.
    """
    return _retry_locked(  # type: ignore[no-any-return]
        lambda: _cancel(execution_id, key_id, operator_agents)
    )


def _cancel(
    execution_id: str, key_id: int, operator_agents: frozenset[str] | None
) -> CancelOutcome:

    try:
        pk = uuid.UUID(str(execution_id))
    except ValueError:
        raise NotFound(f"execution {execution_id!r} does not exist") from None
    row = Execution.objects.filter(pk=pk).first()
    visible = row is not None and (
        row.api_key_id == key_id
        or (
            operator_agents is not None
            and (not operator_agents or row.agent_name in operator_agents)
        )
    )
    if row is None or not visible:
        raise NotFound(f"execution {execution_id!r} does not exist")
    with transaction.atomic():
        changed = Execution.objects.filter(pk=pk, status=ExecutionStatus.QUEUED).update(
            status=ExecutionStatus.CANCELLED,
            finished_at=timezone.now(),
            error={"type": "cancelled", "message": "cancelled before it started"},
        )
        if changed:
            stored = execution_out(Execution.objects.get(pk=pk))
            transaction.on_commit(
                lambda: publish_sync(
                    str(pk),
                    {
                        "type": "execution.completed",
                        "execution_id": str(pk),
                        "result": stored,
                        "seq": 1,
                    },
                )
            )
            return CancelOutcome(str(pk), ExecutionStatus.CANCELLED, False)
    row.refresh_from_db(fields=["status"])
    if row.status == ExecutionStatus.RUNNING:
        timeout_s = float(
            Agent.objects.filter(name=row.agent_name).values_list("timeout_s", flat=True).first()
            or 3600.0
        )
        cancel_flags().request(str(pk), timeout_s + execution_claim_grace_s() + 60)
        return CancelOutcome(str(pk), ExecutionStatus.RUNNING, True)
    if row.status == ExecutionStatus.CANCELLED:
        return CancelOutcome(str(pk), ExecutionStatus.CANCELLED, False)
    raise Conflict(f"execution {pk} already finished ({row.status})")


def executions_reap_stale(*, now: datetime | None = None) -> int:
    """Fail executions left ``running`` by a process that died.

    An execution cannot legitimately run past its agent's deadline (``timeout_s`` <= 3600 s),
    so one still ``running`` after ``BREAKWATER_STALE_EXECUTION_S`` since it started belongs
    to a dead process (since it started: a queued execution may wait longer than that before
    a worker claims it). The conditional UPDATE makes concurrent reapers safe: each row
    changes once.
    """

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BREAKWATER_STALE_EXECUTION_S)
    started_before = Q(started_at__lt=cutoff) | Q(started_at__isnull=True, created_at__lt=cutoff)
    return Execution.objects.filter(started_before, status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.FAILED,
        finished_at=now,
        error={"type": "worker_lost", "message": "the process running this execution died"},
    )


def executions_requeue_stale(*, now: datetime | None = None, older_than_s: float = 300.0) -> int:
    """Dispatch again executions still ``queued`` long after they were accepted.

    Their message was lost (a broker restart without persistence, a dispatch that failed after
    commit, an embedded ``serve`` that died with work queued). Dispatching twice is harmless:
    a delivery that cannot claim the row exits quietly. A requeued execution keeps its request's
    ``max_tokens`` (on the row); it does use the response cache even if its lost message said
    to skip it (``bypass_cache`` travels in the message only).
    """

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=older_than_s)
    targets = agents_dispatch_targets()
    stale = list(
        Execution.objects.filter(status=ExecutionStatus.QUEUED, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("id", "agent_name")[:200]
    )
    for execution_id, agent_name in stale:
        timeout_s, queue = targets.get(agent_name, (30.0, execution_queue_name(None)))
        execution_dispatch(execution_id=str(execution_id), timeout_s=timeout_s, queue=queue)
    if stale:
        log.warning("re-dispatched %d execution(s) left queued", len(stale))
    return len(stale)


def publish_sync(execution_id: str, message: dict[str, Any]) -> None:
    """Push ``message`` to the execution's websocket group, from sync code."""
    async_to_sync(publish)(execution_id, message)
