"""Celery tasks for agents. Thin: take ids, call one service, explicit limits."""

from __future__ import annotations

from typing import Any

import redis.exceptions
from celery import shared_task
from django.db import InterfaceError, OperationalError

from agents.executions import queue, retention, runner, settle

# Worth another delivery: the database, Redis or the network was unreachable before the run
# started (the claim was given back). Anything else is a bug or bad data: retrying repeats it.
INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, redis.exceptions.RedisError, OSError)
MAX_AGENT_TIMEOUT_S = 3600.0  # the database's bound on Agent.timeout_s
_SOFT, _HARD = queue.execution_time_limits(MAX_AGENT_TIMEOUT_S)


@shared_task(name="agents.tasks.executions_reap_stale", acks_late=True, time_limit=120)
def executions_reap_stale() -> int:
    return queue.executions_reap_stale()


@shared_task(
    bind=True,
    name="agents.tasks.execution_run",
    acks_late=True,  # a worker that dies mid-run leaves the message to be delivered again
    reject_on_worker_lost=True,  # ... also when the pool's child is killed (prefork)
    ignore_result=True,  # the Execution row is the result
    max_retries=5,
    # Defaults for the longest agent; execution_dispatch sets each message's limits from its
    # agent's timeout_s (queue.execution_time_limits).
    soft_time_limit=_SOFT,
    time_limit=_HARD,
)
def execution_run(
    self: Any, execution_id: str, max_tokens: int | None = None, bypass_cache: bool = False
) -> str:
    """Run one queued execution, at most once whatever the deliveries (see
    ``queue.execution_claim``)."""
    delivery = self.request.delivery_info or {}
    try:
        return runner.execution_run(
            execution_id=execution_id,
            max_tokens=max_tokens,
            bypass_cache=bypass_cache,
            queue=delivery.get("routing_key") or None,
        )
    except INFRASTRUCTURE_ERRORS as exc:
        if self.request.called_directly:  # the embedded worker: no broker to retry through
            raise
        raise self.retry(exc=exc, countdown=min(60, 2 ** (self.request.retries + 1))) from exc


@shared_task(name="agents.tasks.executions_settle_dead", acks_late=True, time_limit=60)
def executions_settle_dead() -> int:
    """Executions of dead processes settled (failed or queued again)."""
    settled = settle.executions_settle_dead()
    return settled.failed + settled.requeued


@shared_task(name="agents.tasks.executions_requeue_stale", acks_late=True, time_limit=120)
def executions_requeue_stale() -> int:
    return queue.executions_requeue_stale()


@shared_task(name="agents.tasks.executions_prune", acks_late=True, time_limit=180)
def executions_prune() -> int:
    """Finished executions past ``BREAKWATER_RETENTION_DAYS`` deleted (a run stops after
    ``retention.RUN_BUDGET_S``; the next one goes on)."""
    return retention.executions_prune().deleted
