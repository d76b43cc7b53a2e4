"""Writes for execution rows: queued (async) executions from enqueue to settlement, and the
recovery of rows that a lost message or a dead process left behind (docs/ASYNC.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction

from agents.models import Agent
from console.errors import Conflict, NotFound

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


def _log() -> Any:
    import logging

    return logging.getLogger("breakwater.executions")


def _retry_locked(fn: Any) -> Any:
    """Call ``fn()``; retry briefly while SQLite answers "database table is locked".

    SQLite in shared-cache mode (the test database; a file database under a write burst past
    its busy timeout) reports a concurrent writer as an immediate error instead of waiting.
    The writes retried here are conditional or idempotent, so running one again is safe.
    """
    import time

    from django.db import OperationalError

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
    from django.conf import settings

    return float(settings.BREAKWATER_EXECUTION_CLAIM_GRACE_S)


def execution_time_limits(timeout_s: float) -> tuple[float, float]:
    """Celery's (soft, hard) time limits for an execution of an agent with ``timeout_s``."""
    return timeout_s + SOFT_LIMIT_MARGIN_S, timeout_s + HARD_LIMIT_MARGIN_S


def execution_enqueue(
    *,
    agent: str,
    timeout_s: float,
    messages: list[dict[str, str]],
    session_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    max_tokens: int | None = None,
    bypass_cache: bool = False,
    api_key_id: int | None = None,
) -> str:
    """Write a ``queued`` execution and dispatch it once the transaction commits.

    ``max_tokens`` and ``bypass_cache`` have no column: they travel in the task message.
    """
    from functools import partial

    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus

    with transaction.atomic():
        row = Execution.objects.create(
            agent_name=agent,
            api_key_id=api_key_id,
            status=ExecutionStatus.QUEUED,
            queued_at=timezone.now(),
            input=list(messages),
            session_id=session_id or "",
            metadata=dict(metadata or {}),
        )
        transaction.on_commit(
            partial(
                execution_dispatch,
                execution_id=str(row.pk),
                timeout_s=timeout_s,
                max_tokens=max_tokens,
                bypass_cache=bypass_cache,
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
    """Hand an execution to a worker: ``apply_async`` on ``queue`` (default
    ``BREAKWATER_EXECUTION_QUEUE``) with time limits from the agent's timeout, or the in-process
    worker in embedded mode."""
    from django.conf import settings

    kwargs: dict[str, Any] = {"execution_id": execution_id}
    if max_tokens is not None:
        kwargs["max_tokens"] = max_tokens
    if bypass_cache:
        kwargs["bypass_cache"] = True
    if settings.EMBEDDED:
        import threading

        from console.embedded import EmbeddedWorker, current_worker

        # A process without `serve` (a command, a test) gets a worker of its own.
        worker = current_worker() or EmbeddedWorker()
        if countdown > 0:
            timer = threading.Timer(countdown, worker.submit, (EXECUTION_TASK,), kwargs)
            timer.daemon = True
            timer.start()
        else:
            try:
                worker.submit(EXECUTION_TASK, **kwargs)
            except RuntimeError:  # shutting down: the row stays queued for a later dispatch
                _log().warning("in-process worker stopped; %s stays queued", execution_id)
        return
    from agents.tasks import execution_run

    soft, hard = execution_time_limits(timeout_s)
    execution_run.apply_async(
        kwargs=kwargs,
        queue=queue or settings.BREAKWATER_EXECUTION_QUEUE,
        countdown=countdown or None,
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


def execution_claim(*, execution_id: str, now: datetime | None = None) -> ExecutionClaim:
    """Claim a queued execution for this delivery, or a running one whose delivery died.

    One conditional UPDATE moves the row to ``running`` and stamps ``created_at`` with the claim
    time; it matches ``queued``, or ``running`` with a claim older than the agent's timeout plus
    :func:`execution_claim_grace_s` (no live delivery runs that long: the executor's deadline,
    the runner's watchdog and Celery's hard time limit all end it first). It must change exactly
    one row: concurrent deliveries race on it and all but one change nothing. Before taking over
    a dead delivery's execution the journal is drained once, so a result that delivery recorded
    just before dying is stored, and found final, instead of being run again. Outcomes:

    * ``claimed``: run it;
    * ``finished`` / ``missing``: nothing to do (a redelivered message, a cancelled execution);
    * ``busy``: another delivery holds a fresh claim; look again after ``wait_s``.
    """
    return _retry_locked(lambda: _claim(execution_id, now))  # type: ignore[no-any-return]


def _claim(execution_id: str, now: datetime | None) -> ExecutionClaim:
    from django.db.models import Q
    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus

    now = now or timezone.now()
    row = Execution.objects.filter(pk=execution_id).only("agent_name", "status", "created_at")
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
    stale = current.status == ExecutionStatus.RUNNING and current.created_at < now - stale_after
    if stale:
        _journal_drain_once()
    from agents.processes import process_owner_id

    changed = (
        Execution.objects.filter(pk=execution_id)
        .filter(
            Q(status=ExecutionStatus.QUEUED)
            | Q(status=ExecutionStatus.RUNNING, created_at__lt=now - stale_after)
        )
        .update(status=ExecutionStatus.RUNNING, created_at=now, owner=process_owner_id("worker"))
    )
    if changed == 1:
        claimed = Execution.objects.select_related("api_key").get(pk=execution_id)
        return ExecutionClaim("claimed", claimed, timeout_s, reclaimed=stale)
    current = row.first()
    if current is None:
        return ExecutionClaim("missing")
    if current.status in FINAL_STATUSES:
        return ExecutionClaim("finished", timeout_s=timeout_s)
    wait = (current.created_at + stale_after - now).total_seconds()
    return ExecutionClaim("busy", timeout_s=timeout_s, wait_s=max(0.2, wait + 0.05))


def _journal_drain_once() -> None:
    """Store what the journal holds now (this process's drain of either journal)."""
    import asyncio

    from django.conf import settings

    from agents.recording import file_drain, journal_directory, redis_drain

    async def drain() -> None:
        if settings.EMBEDDED:
            await file_drain(journal_directory())()
            return
        from console.redis import get_async_redis

        client = get_async_redis()
        try:
            await redis_drain(client)()
        finally:
            await client.aclose()

    try:
        asyncio.run(drain())
    except Exception:  # the claim stays safe: the ledger is unique per execution anyway
        _log().warning("draining the journal before a reclaim failed", exc_info=True)


def execution_release(*, execution_id: str, claimed_at: datetime) -> bool:
    """Give a claim back (an infrastructure error before the run started): ``queued`` again,
    only if the claim is still ours."""
    from agents.models import Execution, ExecutionStatus

    rows = Execution.objects.filter(
        pk=execution_id, status=ExecutionStatus.RUNNING, created_at=claimed_at
    )
    changed: int = _retry_locked(lambda: rows.update(status=ExecutionStatus.QUEUED))
    return changed == 1


def execution_settle(*, result: Any) -> dict[str, Any]:
    """Store a finished execution and its ledger entry now, exactly as the journal drainer
    does (the same function, so the drainer's later copy of the event changes nothing), and
    return the stored execution as the API shows it."""
    from agents.models import Execution
    from agents.recording.events import encode_finished, row_from_event
    from agents.recording.store import store_rows
    from agents.selectors import execution_out

    rows = [(0, row_from_event(encode_finished(result)))]
    outcome = _retry_locked(lambda: store_rows(rows))
    if outcome.rejected:
        _log().error("execution %s could not be stored: %s", result.execution_id, outcome.rejected)
    return execution_out(_retry_locked(lambda: Execution.objects.get(pk=result.execution_id)))


def execution_fail(*, execution_id: str, error: dict[str, str]) -> dict[str, Any] | None:
    """Fail a ``running`` execution whose run ended without a result (Celery's soft time
    limit). Returns the stored execution, or None if it was no longer running."""
    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus
    from agents.selectors import execution_out

    changed = Execution.objects.filter(pk=execution_id, status=ExecutionStatus.RUNNING).update(
        status=ExecutionStatus.FAILED, finished_at=timezone.now(), error=error
    )
    return execution_out(Execution.objects.get(pk=execution_id)) if changed else None


def execution_run(
    *,
    execution_id: str,
    max_tokens: int | None = None,
    bypass_cache: bool = False,
    queue: str | None = None,
) -> str:
    """Claim and run one queued execution; what ``agents.tasks.execution_run`` does.

    Returns the claim's outcome (``finished``/``missing``: nothing done; ``deferred``: busy,
    looked at again later) or the execution's final status. Raises only for infrastructure
    errors before the run started (the claim is given back first), which the task retries.
    A busy execution is looked at again on ``queue`` (the queue this delivery came from).
    """
    claim = execution_claim(execution_id=execution_id)
    if claim.outcome in {"finished", "missing"}:
        return str(claim.outcome)
    if claim.outcome == "busy":
        execution_dispatch(
            execution_id=execution_id,
            timeout_s=claim.timeout_s,
            countdown=claim.wait_s,
            max_tokens=max_tokens,
            bypass_cache=bypass_cache,
            queue=queue,
        )
        return "deferred"
    from celery.exceptions import SoftTimeLimitExceeded

    row = claim.execution
    try:
        return str(
            _in_engine_loop(lambda: _run_claimed(row, claim.timeout_s, max_tokens, bypass_cache))
        )
    except _EngineUnavailable as exc:
        execution_release(execution_id=execution_id, claimed_at=row.created_at)
        raise exc.__cause__ or exc from None
    except SoftTimeLimitExceeded:
        stored = execution_fail(
            execution_id=execution_id,
            error={"type": "time_limit", "message": "the worker's time limit ended the run"},
        )
        if stored is not None:
            _publish_sync(
                execution_id,
                {"type": "execution.completed", "execution_id": execution_id, "result": stored},
            )
        return "failed"


class _EngineUnavailable(Exception):
    """The engine could not start (configuration or shared state unreachable)."""


def _in_engine_loop(make: Any) -> Any:
    """Run ``make()`` where executions run: on the serving loop's engine in embedded mode (its
    in-memory state, journal and channel layer), else under ``asyncio.run`` with a fresh engine
    for that loop (a Celery worker process), shut down afterwards."""
    import asyncio

    from django.conf import settings

    from agents.engine import engine_shutdown, get_engine

    if settings.EMBEDDED:
        from console.embedded import current_worker

        worker = current_worker()
        loop = worker.loop if worker is not None else None
        if loop is not None and loop.is_running() and not loop.is_closed():
            return asyncio.run_coroutine_threadsafe(make(), loop).result()

    async def own_engine() -> Any:
        engine = get_engine()
        if not settings.EMBEDDED:
            # The serve process's drainer (or `manage.py drain_records`) stores this worker's
            # Redis journal; the runner settles its own execution without waiting for it.
            engine.drainer = None
        try:
            return await make()
        finally:
            await engine_shutdown()
            if not settings.EMBEDDED:  # this loop's clients end with the loop
                from console.redis import get_async_redis, get_async_wire

                await get_async_wire().aclose()
                await get_async_redis().aclose()

    return asyncio.run(own_engine())


async def _ignore_token(text: str) -> None:
    return None


def _empty_result(row: Any, request: Any, status: str, error: dict[str, str] | None) -> Any:
    """An execution result for a run that never reached the executor's pipeline."""
    import time
    from decimal import Decimal

    from agents.runtime.types import ExecutionResult, ExecutionStatus, Usage

    now = time.time()
    return ExecutionResult(
        execution_id=str(row.pk),
        agent=row.agent_name,
        status=ExecutionStatus(status),
        output="",
        model=None,
        deployment=None,
        attempts=0,
        fallback_used=False,
        fallback_reason=None,
        cached=False,
        usage=Usage(),
        cost_usd=Decimal(0),
        latency_ms=0.0,
        created_at=row.created_at.timestamp(),
        finished_at=now,
        error=error,
        session_id=request.session_id,
        api_key_id=request.api_key_id,
        metadata=request.metadata,
        input=request.messages,
    )


def _request_for(row: Any, max_tokens: int | None, bypass_cache: bool) -> Any:
    from agents.runtime.types import ExecutionRequest, Message, RateLimits

    key = row.api_key
    return ExecutionRequest(
        agent=row.agent_name,
        messages=tuple(Message(m["role"], m["content"]) for m in row.input),
        execution_id=str(row.pk),
        max_tokens=max_tokens,
        session_id=row.session_id or None,
        metadata=dict(row.metadata or {}),
        api_key_id=row.api_key_id,
        api_key_limits=RateLimits(key.rate_limit_rpm, key.rate_limit_tpm) if key else RateLimits(),
        bypass_cache=bypass_cache,
    )


async def _run_claimed(
    row: Any, timeout_s: float, max_tokens: int | None, bypass_cache: bool
) -> str:
    """Run a claimed execution under supervision (cancel requests, a watchdog), settle it,
    then publish ``completed``."""
    import asyncio
    import contextlib

    from agents.engine import get_engine
    from agents.live_events import cancel_flags, live_events_for
    from agents.recording.drainer import with_fresh_connections
    from agents.runtime.executor import UnknownAgent
    from agents.runtime.types import ExecutionStatus

    execution_id = str(row.pk)
    request = _request_for(row, max_tokens, bypass_cache)
    engine = get_engine()
    try:
        if not engine.started:
            await engine.start()
    except Exception as exc:
        raise _EngineUnavailable(str(exc)) from exc
    live = live_events_for(engine)
    flags = cancel_flags()
    live.watch(execution_id)
    ended = "done"
    error: dict[str, str] | None = None
    try:
        if await flags.requested(execution_id):
            ended = "cancelled"
        else:
            run = asyncio.ensure_future(engine.execute(request, on_token=_ignore_token))
            ended = await _supervise(run, flags, execution_id, timeout_s + WATCHDOG_MARGIN_S)
            with contextlib.suppress(asyncio.CancelledError):
                await run
    except UnknownAgent:
        error = {"type": "agent_unavailable", "message": f"agent {row.agent_name!r} is gone"}
    except Exception as exc:  # a dependency broke mid-run; the executor reported what it had
        error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
    result = live.result(execution_id)
    if result is None:
        status = "cancelled" if ended == "cancelled" else "failed"
        if status == "failed" and error is None:
            error = {"type": "internal_error", "message": "the run ended without a result"}
        result = _empty_result(row, request, status, error)
    elif ended == "timeout":
        from dataclasses import replace as _replace

        result = _replace(
            result,
            status=ExecutionStatus.FAILED,
            error={"type": "timeout", "message": "the run outlived its agent's deadline"},
        )
    try:
        stored = await asyncio.to_thread(with_fresh_connections, execution_settle, result=result)
    except Exception:
        # The journal holds the result (the executor recorded it): the drainer stores it later.
        _log().exception("settling execution %s failed", execution_id)
        stored = result.as_dict()
    await live.complete(execution_id, stored)
    flags.clear(execution_id)
    return str(stored["status"])


async def _supervise(run: Any, flags: Any, execution_id: str, limit_s: float) -> str:
    """Wait for ``run``, polling the cancel flag; ``done``, ``cancelled`` or ``timeout``."""
    import asyncio

    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        left = deadline - loop.time()
        done, _ = await asyncio.wait({run}, timeout=max(0.0, min(CANCEL_POLL_S, left)))
        if done:
            return "done"
        if loop.time() >= deadline:
            reason = "timeout"
        elif await flags.requested(execution_id):
            reason = "cancelled"
        else:
            continue
        run.cancel()
        return reason


def _publish_sync(execution_id: str, message: dict[str, Any]) -> None:
    from asgiref.sync import async_to_sync

    from agents.live_events import publish

    async_to_sync(publish)(execution_id, message)


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
    import uuid

    from django.utils import timezone

    from agents.live_events import cancel_flags
    from agents.models import Execution, ExecutionStatus
    from agents.selectors import execution_out

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
                lambda: _publish_sync(
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


@dataclass(frozen=True)
class SettleDead:
    failed: int = 0  # run-now executions: failed, charged their reservation
    requeued: int = 0  # queued executions: queued again
    charged_micros: int = 0  # what was charged for work whose usage is unknown


def _budget_keys(rows: list[Any]) -> dict[Any, tuple[str, ...]]:
    """The budget window keys each execution's admission held (the budgets that apply to its
    agent and key, in the windows of its ``created_at``)."""
    from agents.live_config import budget_rule
    from agents.runtime.budgets import window_bounds
    from budgets.models import Budget, BudgetScope

    budgets = list(Budget.objects.select_related("agent"))
    keys: dict[Any, tuple[str, ...]] = {}
    for row in rows:
        found = []
        for budget in budgets:
            if budget.scope == BudgetScope.AGENT and (
                budget.agent is None or budget.agent.name != row.agent_name
            ):
                continue
            if budget.scope == BudgetScope.API_KEY and budget.api_key_id != row.api_key_id:
                continue
            rule = budget_rule(budget)
            window, _, _ = window_bounds(rule, row.created_at.timestamp())
            found.append(f"budget:{rule.id}:{window}")
        keys[row.pk] = tuple(found)
    return keys


def executions_settle_dead(
    *, store: Any = None, now: datetime | None = None, batch: int = 500
) -> SettleDead:
    """Settle the executions that dead processes left ``running`` (``agents.processes``).

    The journal is drained first, so what a process recorded before it died is stored rather
    than settled. Then, per execution:

    * in the shared state its leases and rate-log entries are dropped and its reservations
      become spend (:class:`~agents.runtime.state.Abandon`): the call may have gone upstream,
      and its usage is unknown, so it is charged conservatively, at its reservation (the
      larger of what the store held and what its ``started`` event journaled);
    * a queued execution is queued again (and dispatched): the abandoned attempt's charge is a
      ledger entry of its own (id ``uuid5(execution id, owner)``), since the execution's own
      entry is its next run's;
    * any other is failed (``error.type`` ``process_died``), its cost and ledger entry that
      charge.

    Each row changes with a conditional UPDATE (still ``running``, same owner): concurrent
    settlers, and a late ``finished`` from a process that was not dead after all, each change
    it once (a late ``finished`` still overwrites the row: it is the truth; the ledger keeps
    the first charge). Runs at start-up in embedded mode and every 10 s as a job.
    """
    import uuid as uuid_module
    from decimal import Decimal

    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus, ModelDeployment, WorkerProcess
    from agents.processes import processes_mark_dead
    from agents.runtime.budgets import to_micros
    from agents.runtime.state import Abandon
    from budgets.models import SpendEntry

    now = now or timezone.now()
    dead = processes_mark_dead(now=now)
    if not dead:
        return SettleDead()
    running = Execution.objects.filter(status=ExecutionStatus.RUNNING, owner__in=dead)
    if not running.exists():
        return SettleDead()
    _journal_drain_once()  # what they recorded before dying is the truth
    rows = list(
        running.only(
            "id", "agent_name", "api_key_id", "owner", "reserved_usd", "queued_at", "created_at"
        ).order_by("created_at")[:batch]
    )
    if not rows:
        return SettleDead()
    keys = _budget_keys(rows)
    deployments = tuple(ModelDeployment.objects.values_list("id", flat=True))
    from agents.engine import on_state_sync

    held: dict[str, int] = on_state_sync(
        lambda state: state.abandon(
            Abandon(
                lease_ids=tuple(str(row.pk) for row in rows),
                deployment_ids=deployments,
                budget_keys=tuple(sorted({k for ks in keys.values() for k in ks})),
                charge=True,
            )
        ),
        store,
    )
    owners = {p.id: p for p in WorkerProcess.objects.filter(id__in={row.owner for row in rows})}
    failed = requeued = charged = 0
    dispatch: list[tuple[str, str]] = []
    for row in rows:
        micros = max(held.get(str(row.pk), 0), to_micros(row.reserved_usd, up=True))
        cost = Decimal(micros) / Decimal(1_000_000)
        owner = owners.get(row.owner)
        who = f"{owner.kind} pid {owner.pid} on {owner.host}" if owner else row.owner
        still = Execution.objects.filter(pk=row.pk, status=ExecutionStatus.RUNNING, owner=row.owner)
        entry = SpendEntry(
            execution_id=row.pk,
            at=row.created_at,
            agent_name=row.agent_name,
            api_key_id=row.api_key_id,
            model="",
            cost_usd=cost,
            charged_micros=micros,
        )
        with transaction.atomic():
            if row.queued_at is not None:
                if not still.update(status=ExecutionStatus.QUEUED, owner=""):
                    continue
                requeued += 1
                dispatch.append((str(row.pk), row.agent_name))
                entry.execution_id = uuid_module.uuid5(row.pk, f"abandoned:{row.owner}")
            else:
                message = f"the process running it ({who}) died"
                if micros:
                    message += f"; its usage is unknown, so it is charged its reservation (${cost})"
                if not still.update(
                    status=ExecutionStatus.FAILED,
                    finished_at=now,
                    cost_usd=cost,
                    error={"type": "process_died", "message": message},
                ):
                    continue
                failed += 1
            if micros:
                SpendEntry.objects.bulk_create([entry], ignore_conflicts=True)
                charged += micros
    if dispatch:
        timeouts = dict(Agent.objects.values_list("name", "timeout_s"))
        for execution_id, agent_name in dispatch:
            execution_dispatch(
                execution_id=execution_id, timeout_s=float(timeouts.get(agent_name, 30.0))
            )
    if failed or requeued:
        _log().warning(
            "settled %d execution(s) of dead processes: %d failed, %d queued again, "
            "%d micro-USD charged at their reservations",
            failed + requeued,
            failed,
            requeued,
            charged,
        )
    return SettleDead(failed, requeued, charged)


def executions_reap_stale(*, now: datetime | None = None) -> int:
    """Fail executions left ``running`` by a process that died.

    An execution cannot legitimately run past its agent's deadline (``timeout_s`` <= 3600 s),
    so one still ``running`` after ``BREAKWATER_STALE_EXECUTION_S`` belongs to a dead process.
    The conditional UPDATE makes concurrent reapers safe: each row changes once.
    """
    from django.conf import settings
    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.BREAKWATER_STALE_EXECUTION_S)
    return Execution.objects.filter(status=ExecutionStatus.RUNNING, created_at__lt=cutoff).update(
        status=ExecutionStatus.FAILED,
        finished_at=now,
        error={"type": "worker_lost", "message": "the process running this execution died"},
    )


def executions_requeue_stale(*, now: datetime | None = None, older_than_s: float = 300.0) -> int:
    """Dispatch again executions still ``queued`` long after they were accepted.

    Their message was lost (a broker restart without persistence, a dispatch that failed after
    commit, an embedded ``serve`` that died with work queued). Dispatching twice is harmless:
    a delivery that cannot claim the row exits quietly. A requeued execution runs with its
    agent's ``max_tokens`` (the per-request value travelled only in the lost message).
    """
    from django.utils import timezone

    from agents.models import Execution, ExecutionStatus

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=older_than_s)
    timeouts = dict(Agent.objects.values_list("name", "timeout_s"))
    stale = list(
        Execution.objects.filter(status=ExecutionStatus.QUEUED, created_at__lt=cutoff)
        .order_by("created_at")
        .values_list("id", "agent_name")[:200]
    )
    for execution_id, agent_name in stale:
        execution_dispatch(
            execution_id=str(execution_id), timeout_s=float(timeouts.get(agent_name, 30.0))
        )
    if stale:
        _log().warning("re-dispatched %d execution(s) left queued", len(stale))
    return len(stale)
