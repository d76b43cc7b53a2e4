"""Executions that dead processes left ``running``: settled, so nothing stays stuck and no
reservation is held for ever (``agents.executions.processes`` decides who is dead)."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import partial
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents.backends import on_state_sync
from agents.executions.processes import processes_mark_dead
from agents.executions.queue import (
    agents_dispatch_targets,
    execution_dispatch,
    execution_queue_name,
    journal_drain_once,
)
from agents.models import Execution, ExecutionStatus, ModelDeployment, WorkerProcess
from agents.runtime.budgets import to_micros, window_bounds
from agents.runtime.state import Abandon, StateStore
from budgets.models import Budget, BudgetScope, SpendEntry
from budgets.rules import budget_rule

log = logging.getLogger("breakwater.executions")


@dataclass(frozen=True)
class SettleDead:
    failed: int = 0  # run-now executions: failed, charged their reservation
    requeued: int = 0  # queued executions: queued again
    charged_micros: int = 0  # what was charged for work whose usage is unknown


def _started(row: Any) -> datetime:
    """When its admission chose its budget windows (rows from before agents migration 0012
    have no ``started_at``: their ``created_at`` was the start)."""
    return row.started_at or row.created_at  # type: ignore[no-any-return]


def _budget_keys(rows: list[Any]) -> dict[Any, tuple[str, ...]]:
    """The budget window keys each execution's admission held (the budgets that apply to its
    agent and key, in the windows of its start)."""
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
            window, _, _ = window_bounds(rule, _started(row).timestamp())
            found.append(f"budget:{rule.id}:{window}")
        keys[row.pk] = tuple(found)
    return keys


async def _abandon(state: StateStore, *, request: Abandon) -> dict[str, int]:
    return await state.abandon(request)


def _abandoned_entry(row: Any, micros: int) -> SpendEntry:
    """The ledger entry of an attempt a dead process left of a queued execution that runs
    again: an id of its own (``uuid5(execution id, owner)``), since the execution's own entry
    is its next run's."""
    return SpendEntry(
        execution_id=uuid.uuid5(row.pk, f"abandoned:{row.owner}"),
        at=_started(row),
        agent_name=row.agent_name,
        api_key_id=row.api_key_id,
        model="",
        cost_usd=Decimal(micros) / Decimal(1_000_000),
        charged_micros=micros,
    )


def execution_attempt_abandoned(*, row: Any, store: Any = None) -> int:
    """Charge the attempt a dead delivery left of an execution claimed again (the claim found
    it ``running`` past its deadline: ``agents.executions.queue.execution_claim``), as
    :func:`executions_settle_dead` charges a queued one it requeues: its reservation becomes
    spend, on a ledger entry of its own, and its lease is dropped but not marked gone (the new
    run uses the same id). ``row`` is the row as the dead delivery left it (owner, claim time,
    reservation). Returns the micro-USD charged."""
    request = Abandon(
        lease_ids=(str(row.pk),),
        deployment_ids=tuple(ModelDeployment.objects.values_list("id", flat=True)),
        budget_keys=_budget_keys([row])[row.pk],
        charge=True,
        tombstone_ttl_s=0.0,
    )
    held: dict[str, int] = on_state_sync(partial(_abandon, request=request), store)
    micros = max(held.get(str(row.pk), 0), to_micros(row.reserved_usd, up=True))
    if micros:
        SpendEntry.objects.bulk_create([_abandoned_entry(row, micros)], ignore_conflicts=True)
        log.warning(
            "execution %s: the attempt of a dead delivery (owner %s) charged %d micro-USD",
            row.pk,
            row.owner,
            micros,
        )
    return micros


def executions_settle_dead(
    *, store: Any = None, now: datetime | None = None, batch: int = 500
) -> SettleDead:
    """Settle the executions that dead processes left ``running`` (``agents.executions.processes``).

    The journal is drained first, so what a process recorded before it died is stored rather
    than settled. Then, per execution:

    * in the shared state its leases and rate-log entries are dropped and its reservations
      become spend (:class:`~agents.runtime.state.Abandon`): the call may have gone upstream,
      and its usage is unknown, so it is charged conservatively, at its reservation (the
      larger of what the store held and what its ``started`` event journaled);
    * a queued execution is queued again (and dispatched): the abandoned attempt's charge is a
      ledger entry of its own (id ``uuid5(execution id, owner)``), since the execution's own
      entry is its next run's; its lease id (the execution id) is not marked gone, so that the
      next run is admitted;
    * any other is failed (``error.type`` ``process_died``), its cost and ledger entry that
      charge.

    Each row changes with a conditional UPDATE (still ``running``, same owner): concurrent
    settlers, and a late ``finished`` from a process that was not dead after all, each change
    it once (a late ``finished`` still overwrites the row: it is the truth; the ledger keeps
    the first charge). Runs at start-up in embedded mode and every 10 s as a job.
    """
    now = now or timezone.now()
    dead = processes_mark_dead(now=now)
    if not dead:
        return SettleDead()
    running = Execution.objects.filter(status=ExecutionStatus.RUNNING, owner__in=dead)
    if not running.exists():
        return SettleDead()
    journal_drain_once()  # what they recorded before dying is the truth
    rows = list(
        running.only(
            "id",
            "agent_name",
            "api_key_id",
            "owner",
            "reserved_usd",
            "queued_at",
            "created_at",
            "started_at",
        ).order_by("created_at")[:batch]
    )
    if not rows:
        return SettleDead()
    keys = _budget_keys(rows)
    deployments = tuple(ModelDeployment.objects.values_list("id", flat=True))
    budget_keys = tuple(sorted({k for ks in keys.values() for k in ks}))
    held: dict[str, int] = {}
    # A queued execution runs again under its own id (its lease id): its lease is not marked
    # gone, or the next run's admission would be refused as late.
    for requeue in (False, True):
        lease_ids = tuple(str(row.pk) for row in rows if (row.queued_at is not None) is requeue)
        if not lease_ids:
            continue
        request = Abandon(
            lease_ids=lease_ids,
            deployment_ids=deployments,
            budget_keys=budget_keys,
            charge=True,
            tombstone_ttl_s=0.0 if requeue else Abandon.tombstone_ttl_s,
        )
        held.update(on_state_sync(partial(_abandon, request=request), store))
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
            at=_started(row),
            agent_name=row.agent_name,
            api_key_id=row.api_key_id,
            model="",
            cost_usd=cost,
            charged_micros=micros,
        )
        with transaction.atomic():
            if row.queued_at is not None:
                if not still.update(status=ExecutionStatus.QUEUED, owner="", started_at=None):
                    continue
                requeued += 1
                dispatch.append((str(row.pk), row.agent_name))
                entry = _abandoned_entry(row, micros)
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
        targets = agents_dispatch_targets()
        for execution_id, agent_name in dispatch:
            timeout_s, queue = targets.get(agent_name, (30.0, execution_queue_name(None)))
            execution_dispatch(execution_id=execution_id, timeout_s=timeout_s, queue=queue)
    if failed or requeued:
        log.warning(
            "settled %d execution(s) of dead processes: %d failed, %d queued again, "
            "%d micro-USD charged at their reservations",
            failed + requeued,
            failed,
            requeued,
            charged,
        )
    return SettleDead(failed, requeued, charged)
