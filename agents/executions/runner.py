"""Running a queued execution: claim it, run it on this process's engine under supervision
(cancel requests, a watchdog past the agent's deadline), settle it, publish ``completed``.
What the ``agents.tasks.execution_run`` task does (docs/ASYNC.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from decimal import Decimal
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from agents.backends import cancel_flags, embedded, serving_loop
from agents.engine import engine_shutdown, get_engine
from agents.executions.live import live_events_for
from agents.executions.queue import (
    CANCEL_POLL_S,
    WATCHDOG_MARGIN_S,
    execution_claim,
    execution_dispatch,
    execution_fail,
    execution_release,
    execution_settle,
    publish_sync,
)
from agents.executions.recording.drainer import with_fresh_connections
from agents.executions.settle import execution_attempt_abandoned
from agents.runtime.executor import UnknownAgent
from agents.runtime.types import (
    ExecutionRequest,
    ExecutionResult,
    ExecutionStatus,
    Message,
    RateLimits,
    Usage,
)
from core.redis import close_loop_clients

log = logging.getLogger("breakwater.executions")


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
    row = claim.execution
    if max_tokens is None:  # a requeued message carries none: the request's, kept on the row
        max_tokens = row.max_tokens
    if claim.abandoned is not None:
        try:
            execution_attempt_abandoned(row=claim.abandoned)
        except Exception:  # the reconcile job reports the drift; the execution still runs
            log.warning("could not charge the abandoned attempt of %s", execution_id, exc_info=True)
    try:
        return str(
            _in_engine_loop(lambda: _run_claimed(row, claim.timeout_s, max_tokens, bypass_cache))
        )
    except _EngineUnavailable as exc:
        execution_release(execution_id=execution_id, claimed_at=row.started_at)
        raise exc.__cause__ or exc from None
    except SoftTimeLimitExceeded:
        stored = execution_fail(
            execution_id=execution_id,
            error={"type": "time_limit", "message": "the worker's time limit ended the run"},
        )
        if stored is not None:
            publish_sync(
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
    loop = serving_loop()
    if loop is not None:
        return asyncio.run_coroutine_threadsafe(make(), loop).result()

    async def own_engine() -> Any:
        engine = get_engine()
        if not embedded():
            # The serve process's drainer (or `manage.py drain_records`) stores this worker's
            # Redis journal; the runner settles its own execution without waiting for it.
            engine.drainer = None
        try:
            return await make()
        finally:
            await engine_shutdown()
            await close_loop_clients()  # this loop's clients end with the loop

    return asyncio.run(own_engine())


async def _ignore_token(text: str) -> None:
    return None


def _empty_result(row: Any, request: Any, status: str, error: dict[str, str] | None) -> Any:
    """An execution result for a run that never reached the executor's pipeline."""
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
        # The runtime's created_at is the start (the time its ledger entry is filed under).
        created_at=(row.started_at or row.created_at).timestamp(),
        finished_at=now,
        error=error,
        session_id=request.session_id,
        api_key_id=request.api_key_id,
        metadata=request.metadata,
        input=request.messages,
    )


def _request_for(row: Any, max_tokens: int | None, bypass_cache: bool) -> Any:
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
        queued=True,
    )


async def _run_claimed(
    row: Any, timeout_s: float, max_tokens: int | None, bypass_cache: bool
) -> str:
    """Run a claimed execution under supervision (cancel requests, a watchdog), settle it,
    then publish ``completed``."""
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
        result = replace(
            result,
            status=ExecutionStatus.FAILED,
            error={"type": "timeout", "message": "the run outlived its agent's deadline"},
        )
    try:
        stored = await asyncio.to_thread(with_fresh_connections, execution_settle, result=result)
    except Exception:
        # The journal holds the result (the executor recorded it): the drainer stores it later.
        log.exception("settling execution %s failed", execution_id)
        stored = result.as_dict()
    await live.complete(execution_id, stored)
    flags.clear(execution_id)
    return str(stored["status"])


async def _supervise(run: Any, flags: Any, execution_id: str, limit_s: float) -> str:
    """Wait for ``run``, polling the cancel flag; ``done``, ``cancelled`` or ``timeout``."""
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
