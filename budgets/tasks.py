"""Celery tasks for budgets (periodic jobs, see console/schedule.py). Thin: call one service."""

from __future__ import annotations

from celery import shared_task

from agents.backends import on_state_sync
from budgets import rollups, services, slo_burn
from budgets.windows import budget_windows_rebuild


# The first run after an upgrade rebuilds today and yesterday (minutes at 15M executions);
# every run after it is proportional to the records since the last.
@shared_task(name="budgets.tasks.rollups_advance", acks_late=True, time_limit=1800)
def rollups_advance() -> int:
    """Row versions folded into the rollups since the previous run (budgets/rollups.py)."""
    return rollups.rollups_advance().rows


@shared_task(name="budgets.tasks.budgets_reconcile", acks_late=True, time_limit=120)
def budgets_reconcile() -> int:
    """Budgets whose counter and ledger disagree (each has a ``ledger_drift`` incident)."""
    return sum(not result.ok for result in services.budgets_reconcile())


@shared_task(name="budgets.tasks.cost_spike_detect", acks_late=True, time_limit=60)
def cost_spike_detect() -> int:
    """Agents with a cost spike incident open after this run."""
    return sum(check.action in ("opened", "open") for check in services.cost_spike_detect())


@shared_task(name="budgets.tasks.budgets_observe", acks_late=True, time_limit=30)
def budgets_observe() -> int:
    """Budgets whose gauges were published."""
    return len(services.budgets_observe())


@shared_task(name="budgets.tasks.budget_windows_prepare", acks_late=True, time_limit=60)
def budget_windows_prepare() -> int:
    """Budget windows written (next windows ahead of time, any the shared state lost)."""
    return len(on_state_sync(lambda state: budget_windows_rebuild(store=state)))


@shared_task(name="budgets.tasks.slo_burn_check", acks_late=True, time_limit=60)
def slo_burn_check() -> int:
    """SLIs of every agent with an SLO burn incident open after this run."""
    return sum(c.action in ("opened", "open", "escalated") for c in slo_burn.slo_burn_check())
