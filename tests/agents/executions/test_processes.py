"""Process liveness and the settlement of what dead processes left running."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from agents.config.apply import config_apply, config_parse
from agents.executions import processes
from agents.executions.processes import Heartbeat, processes_mark_dead
from agents.executions.queue import execution_claim
from agents.executions.settle import execution_attempt_abandoned, executions_settle_dead
from agents.models import Execution, ModelDeployment, WorkerProcess
from agents.runtime.memory import MemoryState
from agents.runtime.state import AdmitRequest, BreakerConfig, BudgetHold, Candidate, WindowInit
from budgets.models import Budget, SpendEntry

pytestmark = pytest.mark.django_db


def process(
    *, beat_s_ago: float = 0.0, host: str = "elsewhere", pid: int = 4242, **fields: Any
) -> WorkerProcess:
    now = timezone.now()
    return WorkerProcess.objects.create(
        id=str(uuid.uuid4()),
        kind="serve",
        host=host,
        pid=pid,
        started_at=now - timedelta(hours=1),
        beat_at=now - timedelta(seconds=beat_s_ago),
        **fields,
    )


@pytest.fixture
def me(monkeypatch: pytest.MonkeyPatch) -> Heartbeat:
    """This process, its heartbeat writing for a minute (the thread itself is not started)."""
    heartbeat = Heartbeat("serve")
    heartbeat._healthy_since = time.monotonic() - 60
    monkeypatch.setattr(processes, "_heartbeat", heartbeat)
    return heartbeat


def dead_ids() -> set[str]:
    return set(WorkerProcess.objects.filter(dead_at__isnull=False).values_list("id", flat=True))


def test_a_process_silent_for_longer_than_dead_after_is_dead(me: Heartbeat, settings: Any) -> None:
    settings.BREAKWATER_DEAD_AFTER_S = 20
    silent = process(beat_s_ago=21)
    alive = process(beat_s_ago=5)
    assert set(processes_mark_dead()) == {silent.id}
    assert dead_ids() == {silent.id}
    assert alive.id not in processes_mark_dead()


def test_after_a_database_outage_nobody_is_judged_dead_before_they_could_beat(
    me: Heartbeat, settings: Any
) -> None:
    settings.BREAKWATER_DEAD_AFTER_S = 20
    me._healthy_since = time.monotonic() - 5  # this process only just reached the database
    process(beat_s_ago=300)  # every heartbeat is old after an outage
    assert processes_mark_dead() == []


def test_a_stopped_process_and_a_gone_pid_on_this_host_are_dead_at_once(me: Heartbeat) -> None:
    me._healthy_since = None  # no age judgement at all
    stopped = process(stopped_at=timezone.now())
    gone = process(host=socket.gethostname(), pid=2**22 + 17)  # above any pid_max default
    here = process(host=socket.gethostname(), pid=os.getppid())
    assert set(processes_mark_dead()) == {stopped.id, gone.id}
    assert here.id not in dead_ids()


def test_this_process_is_never_judged_dead(me: Heartbeat, settings: Any) -> None:
    settings.BREAKWATER_DEAD_AFTER_S = 1
    WorkerProcess.objects.create(
        id=me.identity.id, kind="serve", host=me.identity.host, pid=me.identity.pid,
        beat_at=timezone.now() - timedelta(hours=1),
    )  # fmt: skip
    assert processes_mark_dead() == []


def _running(owner: str, *, reserved: str, queued: bool = False) -> Execution:
    return Execution.objects.create(
        agent_name="support",
        status="running",
        owner=owner,
        reserved_usd=Decimal(reserved),
        queued_at=timezone.now() if queued else None,
        created_at=timezone.now() - timedelta(seconds=30),
    )


@pytest.mark.django_db(transaction=True)
def test_a_dead_processes_executions_are_failed_and_charged_their_reservations(
    me: Heartbeat, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatched: list[tuple[str, str | None]] = []  # (a worker running it would outlive the test)
    monkeypatch.setattr(
        "agents.executions.settle.execution_dispatch",
        lambda *, execution_id, queue=None, **_: dispatched.append((execution_id, queue)),
    )
    settings.EMBEDDED = True
    settings.REDIS_URL = None
    config_apply(
        document=config_parse(
            "providers: [{name: sim, kind: simulated}]\n"
            "models: [{name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1,"
            " output_usd_per_mtok: 1}]\n"
            "agents: [{name: support, model: m, queue: support-pool}]\n"
        )
    )
    deployment_id = ModelDeployment.objects.get().pk
    budget = Budget.objects.create(scope="global", limit_usd=Decimal(10))
    dead = process(stopped_at=timezone.now())
    live = process()
    lost = _running(dead.id, reserved="0.0025")
    queued = _running(dead.id, reserved="0.004", queued=True)
    other = _running(live.id, reserved="0.001")

    # The shared state still holds the dead execution's lease and reservation (a top-up made
    # it larger than its started event journaled).
    store = MemoryState()
    key = f"budget:{budget.pk}:{lost.created_at:%Y-%m-%d}"
    asyncio.run(store.budget_prepare((WindowInit(key, 0, 86_400.0),)))

    def admit(execution: Execution) -> Any:
        request = AdmitRequest(
            lease_id=str(execution.pk),
            lease_ttl_s=90.0,
            agent_breaker_key=None,
            agent_breaker=None,
            rate_limits=(),
            candidates=(Candidate(deployment_id, 10),),
            deployment_breaker=BreakerConfig(),
            budgets=(BudgetHold(key, 10_000_000, 3_000, 86_400.0),),
        )
        return asyncio.run(store.admit(request))

    assert admit(lost).ok

    settled = executions_settle_dead(store=store)

    assert (settled.failed, settled.requeued) == (1, 1)
    lost.refresh_from_db()
    assert (lost.status, (lost.error or {}).get("type"), lost.cost_usd) == (
        "failed",
        "process_died",
        Decimal("0.003"),  # what the store held, more than the journaled 0.0025
    )
    queued.refresh_from_db()
    assert (queued.status, queued.owner) == ("queued", "")
    # handed to a worker again, on its agent's queue
    assert dispatched == [(str(queued.pk), "support-pool")]
    other.refresh_from_db()
    assert other.status == "running"  # a live process's execution is its own
    assert asyncio.run(store.in_flight((deployment_id,))) == {deployment_id: 0}
    assert asyncio.run(store.budget_usage((key,))) == {key: (3_000, 0)}
    entries = {e.execution_id: e.charged_micros for e in SpendEntry.objects.all()}
    assert entries[lost.pk] == 3_000
    # The requeued execution's abandoned attempt is charged under an entry of its own.
    assert entries[uuid.uuid5(queued.pk, f"abandoned:{dead.id}")] == 4_000

    # The failed execution's lease is gone for good; the requeued one runs again under its id.
    assert admit(lost).refusal == "late"
    assert admit(queued).refusal is None
    # Settling again changes nothing.
    assert executions_settle_dead(store=store).failed == 0
    assert SpendEntry.objects.count() == 2


@pytest.mark.django_db(transaction=True)
def test_a_reclaimed_execution_charges_its_dead_attempt_on_an_entry_of_its_own(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead worker's delivery comes back (the broker's visibility timeout) before the settle
    job saw the worker die: the claim takes the row over, and the dead attempt's reservation
    becomes spend on a ledger entry of its own, so the counter and the ledger still agree."""
    monkeypatch.setattr("agents.executions.queue.journal_drain_once", lambda: None)
    settings.BREAKWATER_EXECUTION_CLAIM_GRACE_S = 1.0
    config_apply(
        document=config_parse(
            "providers: [{name: sim, kind: simulated}]\n"
            "models: [{name: m, provider: sim, upstream_model: m-1, input_usd_per_mtok: 1,"
            " output_usd_per_mtok: 1}]\n"
            "agents: [{name: support, model: m, timeout_s: 1}]\n"
        )
    )
    deployment_id = ModelDeployment.objects.get().pk
    budget = Budget.objects.create(scope="global", limit_usd=Decimal(10))
    row = _running("gone-worker", reserved="0.002", queued=True)
    store = MemoryState()
    key = f"budget:{budget.pk}:{row.created_at:%Y-%m-%d}"
    asyncio.run(store.budget_prepare((WindowInit(key, 0, 86_400.0),)))
    dead_attempt = AdmitRequest(
        lease_id=str(row.pk),
        lease_ttl_s=90.0,
        agent_breaker_key=None,
        agent_breaker=None,
        rate_limits=(),
        candidates=(Candidate(deployment_id, 10),),
        deployment_breaker=BreakerConfig(),
        budgets=(BudgetHold(key, 10_000_000, 2_000, 86_400.0),),
    )
    assert asyncio.run(store.admit(dead_attempt)).ok

    claim = execution_claim(execution_id=str(row.pk))
    assert (claim.outcome, claim.reclaimed) == ("claimed", True)
    assert (claim.abandoned.owner, claim.abandoned.created_at) == ("gone-worker", row.created_at)
    assert execution_attempt_abandoned(row=claim.abandoned, store=store) == 2_000

    assert asyncio.run(store.budget_usage((key,))) == {key: (2_000, 0)}
    (entry,) = SpendEntry.objects.all()
    assert entry.execution_id == uuid.uuid5(row.pk, "abandoned:gone-worker")
    assert entry.charged_micros == 2_000
    assert asyncio.run(store.admit(dead_attempt)).ok  # the new run is admitted under its id
