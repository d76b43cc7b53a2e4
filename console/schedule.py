"""Periodic jobs, declared once: Celery beat runs them in distributed mode and the embedded
scheduler runs them in-process in embedded mode.

Each job is a Celery task (so beat can send it) whose body is a plain function of no
arguments; jobs must be idempotent and safe to run concurrently with themselves across
processes (they claim work with conditional UPDATEs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    name: str
    task: str  # dotted Celery task name
    every_s: float


JOBS: tuple[Job, ...] = (
    Job("executions-settle-dead", "agents.tasks.executions_settle_dead", every_s=10),
    Job("executions-reap-stale", "agents.tasks.executions_reap_stale", every_s=60),
    Job("budget-windows-prepare", "budgets.tasks.budget_windows_prepare", every_s=60),
    Job("executions-requeue-stale", "agents.tasks.executions_requeue_stale", every_s=60),
    # Every rollup, from the records written since its last run (budgets/rollups.py); the
    # console's charts lag the traffic by at most this (budgets/series.py).
    Job("rollups-advance", "budgets.tasks.rollups_advance", every_s=15),
    Job("budgets-reconcile", "budgets.tasks.budgets_reconcile", every_s=300),
    Job("cost-spike-detect", "budgets.tasks.cost_spike_detect", every_s=60),
    Job("budgets-observe", "budgets.tasks.budgets_observe", every_s=15),
    # SLO burn-rate incidents (budgets/slo_burn.py).
    Job("slo-burn-check", "budgets.tasks.slo_burn_check", every_s=60),
    Job("notifications-sweep", "incidents.tasks.notifications_sweep", every_s=30),
    Job("incidents-sweep", "incidents.tasks.incidents_sweep", every_s=60),
    # Retention: finished executions past BREAKWATER_RETENTION_DAYS, in batches of at most a
    # minute per run (agents/executions/retention.py).
    Job("executions-prune", "agents.tasks.executions_prune", every_s=300),
)


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        job.name: {"task": job.task, "schedule": job.every_s, "options": {"expires": job.every_s}}
        for job in JOBS
    }
