"""The reconcile job proves the budget counters and the ledger agree, and raises the alarm
when they do not."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from agents.executions.recording.events import encode_finished, row_from_event
from agents.executions.recording.store import store_rows
from agents.models import Agent
from agents.runtime.types import ExecutionStatus
from budgets.models import Budget, SpendEntry
from budgets.rules import budget_rule
from budgets.selectors import budget_spans
from budgets.services import budgets_reconcile
from budgets.windows import budget_windows_rebuild
from incidents.models import Incident
from tests.agents.runtime.support import Harness, deployment, harness
from tests.budgets.conftest import NOW, Counters, budget, spend

pytestmark = pytest.mark.django_db


def traffic(budgets: list[Budget], runs: int, *, agent: str = "support") -> Harness:
    """Real executions through the runtime under ``budgets`` (counters in a MemoryState),
    recorded through the journal's events into the database, as the drainer does."""
    # Prices with 6 decimals make costs finer than a micro-dollar: rounding must agree.
    h = harness(deployments=[deployment(1, "primary", price="0.333333")])
    h.config.rules = tuple(budget_rule(b) for b in budgets)

    async def run() -> None:
        for _ in range(runs):
            result = await h.run(agent=agent)
            assert result.status == ExecutionStatus.SUCCEEDED
            h.clock.advance(30)

    asyncio.run(run())
    outcome = store_rows(
        [(i, row_from_event(encode_finished(r))) for i, r in enumerate(h.records.results)]
    )
    assert outcome.rejected == []
    return h


def _now(h: Harness) -> datetime:
    return datetime.fromtimestamp(h.clock.now(), UTC)


def test_counters_and_ledger_filled_by_real_traffic_agree() -> None:
    agent = Agent.objects.create(name="support", model="primary")
    budgets = [budget(limit="10"), budget("agent", agent=agent, limit="10")]
    h = traffic(budgets, runs=3)
    counters = Counters(h.state.inner)

    results = budgets_reconcile(now=_now(h), usage_reader=counters, settle_s=0)

    assert [r.ok for r in results] == [True, True]
    # 10 input tokens at $0.333333/M and 5 output at $0.666666/M: 6.66666 micro-USD, charged 7.
    assert [r.ledger for r in results] == [21, 21]
    assert [r.counter_before for r in results] == [21, 21]
    assert SpendEntry.objects.count() == 3
    assert not Incident.objects.exists()


def test_a_counter_that_disagrees_with_the_ledger_opens_a_drift_incident() -> None:
    b = budget(limit="10")
    h = traffic([b], runs=2)
    counters = Counters(h.state.inner)
    (span,) = budget_spans([b], now=_now(h))
    counters.settle(span.key, 5)  # spend the ledger never heard of

    (result,) = budgets_reconcile(now=_now(h), usage_reader=counters, settle_s=0)

    assert not result.ok
    assert (result.counter_before, result.ledger, result.drift) == (19, 14, -5)
    incident = Incident.objects.get()
    assert incident.kind == "ledger_drift"
    assert incident.dedup_key == f"ledger_drift:budget:{b.pk}:{span.window_id}"
    opened = incident.events.get(kind="opened")
    assert opened.data["counter_micros"] == 19
    assert opened.data["ledger_micros"] == 14
    assert opened.data["drift_micros"] == -5
    assert "counter 19 micro-USD, ledger 14 micro-USD" in opened.message


def test_a_lost_counter_is_drift_too_and_one_incident_per_budget_window() -> None:
    b = budget(limit="10")
    h = traffic([b], runs=2)
    restarted = Counters()  # an embedded process restarted: its counters are gone

    budgets_reconcile(now=_now(h), usage_reader=restarted, settle_s=0)
    (again,) = budgets_reconcile(now=_now(h), usage_reader=restarted, settle_s=0)

    assert again.drift == 14
    incident = Incident.objects.get()
    assert incident.events.filter(kind="recurred").count() == 1


def test_the_drift_incident_resolves_once_counter_and_ledger_agree_again() -> None:
    b = budget(limit="10")
    counters = Counters()
    (span,) = budget_spans([b], now=NOW)
    spend("0.000005", at=NOW - timedelta(minutes=1))
    budgets_reconcile(now=NOW, usage_reader=counters, settle_s=0)  # counter 0, ledger 5
    assert Incident.objects.get().status == "open"

    counters.settle(span.key, 5)
    (result,) = budgets_reconcile(now=NOW, usage_reader=counters, settle_s=0)

    assert result.ok
    incident = Incident.objects.get()
    assert incident.status == "resolved"
    assert incident.events.filter(kind="resolved").count() == 1


def test_a_drift_left_open_when_its_window_ends_is_resolved_with_the_figures_kept() -> None:
    b = budget(limit="10")
    counters = Counters()
    spend("0.000005", at=NOW - timedelta(minutes=1))
    budgets_reconcile(now=NOW, usage_reader=counters, settle_s=0)  # counter 0, ledger 5

    budgets_reconcile(now=NOW + timedelta(days=1), usage_reader=counters, settle_s=0)

    incident = Incident.objects.get(dedup_key__endswith=":2026-03-11")
    assert incident.status == "resolved"
    assert [e.kind for e in incident.events.all()] == ["opened", "resolved"]
    assert incident.events.get(kind="opened").data["drift_micros"] == 5
    assert incident.events.get(kind="resolved").message.startswith("the budget window ended")
    # The new window agrees (nothing spent in it): no incident for it.
    assert Incident.objects.count() == 1
    assert b.pk == incident.events.get(kind="opened").data["budget_id"]


def test_a_drift_of_a_deleted_budget_is_resolved() -> None:
    b = budget(limit="10")
    spend("0.000005", at=NOW - timedelta(minutes=1))
    budgets_reconcile(now=NOW, usage_reader=Counters(), settle_s=0)
    b.delete()

    assert budgets_reconcile(now=NOW, usage_reader=Counters(), settle_s=0) == []

    assert Incident.objects.get().status == "resolved"


def test_spend_settled_but_not_yet_drained_is_not_drift() -> None:
    """Under traffic the counter runs ahead of the ledger by what the recorder has not stored
    yet: the ledger read between two counter reads must land between them."""
    b = budget(limit="10")
    (span,) = budget_spans([b], now=NOW)
    spend("0.000010", at=NOW - timedelta(minutes=1))
    # First counter read 8: the ledger (10) then also holds spend settled after that read;
    # second read 12: spend settled but not stored yet. Consistent.
    reads: list[Mapping[str, tuple[int, int]]] = [{span.key: (8, 0)}, {span.key: (12, 0)}]
    waited: list[float] = []

    (result,) = budgets_reconcile(
        now=NOW,
        usage_reader=lambda keys: reads.pop(0),
        settle_s=2.0,
        sleep=waited.append,
    )

    assert result.ok
    assert waited == [2.0]
    assert not Incident.objects.exists()


def test_a_ledger_behind_the_first_counter_read_is_drift() -> None:
    b = budget(limit="10")
    (span,) = budget_spans([b], now=NOW)
    spend("0.000010", at=NOW - timedelta(minutes=1))
    reads = [{span.key: (11, 0)}, {span.key: (15, 0)}]

    (result,) = budgets_reconcile(now=NOW, usage_reader=lambda keys: reads.pop(0), settle_s=0)

    assert not result.ok
    assert result.drift == -1


def test_each_budget_is_checked_against_the_entries_it_covers_in_its_window() -> None:
    support = Agent.objects.create(name="support", model="m")
    everyone = budget(limit="10")
    agent_budget = budget("agent", agent=support, limit="10")
    spans = {s.budget.pk: s for s in budget_spans([everyone, agent_budget], now=NOW)}
    spend("0.000003", at=NOW - timedelta(hours=2), agent="support")
    spend("0.000004", at=NOW - timedelta(hours=2), agent="billing")
    spend("0.000100", at=NOW - timedelta(days=1), agent="support")  # yesterday's window
    counters = Counters()
    counters.settle(spans[everyone.pk].key, 7)
    counters.settle(spans[agent_budget.pk].key, 3)

    results = budgets_reconcile(now=NOW, usage_reader=counters, settle_s=0)

    assert [(r.budget_id, r.ledger, r.ok) for r in results] == [
        (everyone.pk, 7, True),
        (agent_budget.pk, 3, True),
    ]


def test_a_budget_created_during_its_window_is_reconciled_from_its_creation() -> None:
    b = budget(limit="10", created_at=NOW - timedelta(hours=1))
    spend("1", at=NOW - timedelta(hours=5))  # before the budget existed: no counter has it
    spend("0.25", at=NOW - timedelta(minutes=30))
    counters = Counters()
    (span,) = budget_spans([b], now=NOW)
    counters.settle(span.key, 250_000)

    (result,) = budgets_reconcile(now=NOW, usage_reader=counters, settle_s=0)
    assert (result.budget_id, result.ledger, result.ok) == (b.pk, 250_000, True)


def test_the_runtimes_window_and_the_ledgers_agree_across_midnight() -> None:
    """Executions on both sides of midnight: each window's counter matches its own entries."""
    b = budget(limit="10")
    h = harness(deployments=[deployment(1, "primary")])
    h.config.rules = (budget_rule(b),)
    midnight = datetime(2026, 3, 12, tzinfo=UTC).timestamp()
    h.clock.advance(midnight - 90 - h.clock.now())

    async def run() -> None:
        for _ in range(4):
            await h.run()
            h.clock.advance(60)

    asyncio.run(run())
    store_rows([(i, row_from_event(encode_finished(r))) for i, r in enumerate(h.records.results)])
    counters = Counters(h.state.inner)

    before = budgets_reconcile(
        now=datetime.fromtimestamp(midnight - 1, UTC), usage_reader=counters, settle_s=0
    )
    after = budgets_reconcile(
        now=datetime.fromtimestamp(midnight + 600, UTC), usage_reader=counters, settle_s=0
    )

    assert [(r.window_id, r.ledger, r.ok) for r in before] == [("2026-03-11", 40, True)]
    assert [(r.window_id, r.ledger, r.ok) for r in after] == [("2026-03-12", 40, True)]


def test_a_budget_paused_after_its_spend_still_reconciles() -> None:
    b = budget(limit="10")
    h = traffic([b], runs=1)
    Budget.objects.filter(pk=b.pk).update(paused=True)
    counters = Counters(h.state.inner)
    (result,) = budgets_reconcile(now=_now(h), usage_reader=counters, settle_s=0)
    assert (result.ok, result.ledger) == (True, 7)


@pytest.mark.django_db(transaction=True)  # the rebuild reads the database from another thread
def test_a_restarted_embedded_process_rebuilds_todays_windows_from_the_ledger() -> None:
    b = budget(limit="10")
    h = traffic([b], runs=2)
    now = _now(h)
    young = budget(
        "agent",
        agent=Agent.objects.create(name="new", model="m"),
        created_at=now - timedelta(hours=1),
    )
    spend("1", at=now - timedelta(hours=2), agent="new")  # before the budget existed
    spend("0.5", at=now - timedelta(minutes=30), agent="new")
    restarted = Counters()

    written = asyncio.run(budget_windows_rebuild(store=restarted.state, now=now))
    spans = budget_spans([b, young], now=now)
    assert set(written) >= {s.key for s in spans}  # and each budget's next window
    assert restarted(tuple(s.key for s in spans)) == {
        spans[0].key: (14 + 1_500_000, 0),
        spans[1].key: (500_000, 0),
    }
    results = budgets_reconcile(now=now, usage_reader=restarted, settle_s=0)
    assert [(r.ok, r.counter_before) for r in results] == [(True, 1_500_014), (True, 500_000)]
    # A rebuild finds every window known and writes nothing.
    assert asyncio.run(budget_windows_rebuild(store=restarted.state, now=now)) == ()
