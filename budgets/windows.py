"""Budget windows rebuilt from the durable record, before admission counts against them.

The shared state's counters are a cache of the ledger: a window the state store does not know
(a new day or month, a restarted embedded process, a Redis restarted without its data or that
evicted the key) refuses admission as ``budget_unknown`` (fail closed) until it is rebuilt here:

    spent      = the ledger's charges in the window since the budget existed
                 (``SpendEntry.charged_micros``, the same rounding the counters settle)
    reserved   = the reservations of executions still ``running`` in the window (journaled with
                 their ``started`` event), each expiring with its lease; one already expired is
                 spent, as it would have become in the store

A rebuild writes only the windows the store does not know (``StateStore.budget_prepare``), so
concurrent rebuilds in several processes are harmless and a known window is never touched.

Three callers: :class:`LedgerBudgetWindows` (the runtime's port: an admission that met an
unknown window waits for its rebuild, once), the engine's start-up (before the first admission),
and the ``budgets-prepare-windows`` job, which also writes each budget's next window ahead of
time, so that midnight costs no admission a rebuild.

What cannot be rebuilt: spend whose record never reached the database. A Redis that loses its
data also loses the journal entries not yet drained (a fraction of a second with the drainer
running); run Redis with AOF persistence in production (docs/RELIABILITY.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.db.models.functions import Coalesce
from django.utils import timezone

from agents.models import Agent, Execution, ExecutionStatus
from agents.runtime.budgets import SLACK_S, to_micros, window_span
from agents.runtime.state import (
    BudgetHold,
    BudgetsUnavailable,
    StateStore,
    StateUnavailable,
    WindowInit,
)
from budgets.models import Budget, BudgetScope
from budgets.selectors import BudgetSpan, budget_list, budget_spans, ledger_micros

log = logging.getLogger("breakwater.budgets")

LEASE_SLACK_S = 30.0  # the executor's lease: the agent's timeout_s plus this
REBUILD_TIMEOUT_S = 10.0


def _spans_for(budgets: list[Budget], keys: Iterable[str], now: datetime) -> list[BudgetSpan]:
    """The current and next window of every budget, plus the windows ``keys`` name."""
    spans = {span.key: span for span in budget_spans(budgets, now=now)}
    for span in list(spans.values()):
        following = budget_spans([span.budget], now=span.end + timedelta(seconds=1))[0]
        spans.setdefault(following.key, following)
    by_id = {b.pk: b for b in budgets}
    for key in keys:
        if key in spans:
            continue
        _, budget_id, window_id = [*key.split(":", 2), "", ""][:3]
        budget = by_id.get(int(budget_id)) if budget_id.isdigit() else None
        if budget is None:
            continue
        span = budget_spans([budget], now=now)[0]
        bounds = window_span(span.rule, window_id)
        if bounds is not None:
            spans[key] = BudgetSpan(
                budget=budget,
                rule=span.rule,
                window_id=window_id,
                start=datetime.fromtimestamp(bounds[0], UTC),
                end=datetime.fromtimestamp(bounds[1], UTC),
            )
    return list(spans.values())


def _ledger(spans: list[BudgetSpan], now: datetime) -> dict[str, int]:
    """Micro-USD charged in each window that has begun, since the budget existed."""
    return ledger_micros([span for span in spans if span.start <= now])


def _in_span(span: BudgetSpan, row: Mapping[str, Any]) -> bool:
    if not span.counted_from <= row["started"] < span.end:
        return False
    budget = span.budget
    if budget.scope == BudgetScope.AGENT:
        return budget.agent is not None and row["agent_name"] == budget.agent.name
    if budget.scope == BudgetScope.API_KEY:
        return bool(row["api_key_id"] == budget.api_key_id)
    return True


def _reservations(
    spans: list[BudgetSpan], now: datetime
) -> dict[str, list[tuple[str, int, float]]]:
    """The reservations of executions still running, per window key."""
    begun = [span for span in spans if span.start <= now]
    if not begun:
        return {}
    earliest = min(span.counted_from for span in begun)
    # Its windows and its lease date from its start (a queued execution's claim), not from
    # when it was accepted; rows from before agents migration 0012 started at created_at.
    rows = list(
        Execution.objects.filter(status=ExecutionStatus.RUNNING, reserved_usd__gt=0)
        .annotate(started=Coalesce("started_at", "created_at"))
        .filter(started__gte=earliest)
        .values("id", "agent_name", "api_key_id", "started", "reserved_usd")
    )
    if not rows:
        return {}
    timeouts = dict(Agent.objects.values_list("name", "timeout_s"))
    found: dict[str, list[tuple[str, int, float]]] = {}
    for row in rows:
        lease_s = float(timeouts.get(row["agent_name"], 3600.0)) + LEASE_SLACK_S
        reservation = (
            str(row["id"]),
            to_micros(row["reserved_usd"], up=True),
            row["started"].timestamp() + lease_s,
        )
        for span in begun:
            if _in_span(span, row):
                found.setdefault(span.key, []).append(reservation)
    return found


def _inits(spans: list[BudgetSpan], now: datetime) -> tuple[WindowInit, ...]:
    ledger = _ledger(spans, now)
    reservations = _reservations(spans, now)
    return tuple(
        WindowInit(
            key=span.key,
            spent=ledger.get(span.key, 0),
            ttl_s=max(1.0, (span.end - now).total_seconds()) + SLACK_S,
            reservations=tuple(reservations.get(span.key, ())),
        )
        for span in spans
    )


async def budget_windows_rebuild(
    *, store: StateStore, keys: Iterable[str] = (), now: datetime | None = None
) -> tuple[str, ...]:
    """Rebuild every window the store does not know: each budget's current and next window,
    and the windows ``keys`` name. Returns the keys written."""
    now = now or timezone.now()
    wanted = tuple(keys)
    budgets = await sync_to_async(budget_list)()
    spans = _spans_for(budgets, wanted, now)
    if not spans:
        missing_keys: tuple[str, ...] = wanted
        inits: tuple[WindowInit, ...] = ()
    else:
        known = await store.budget_windows(tuple(span.key for span in spans))
        missing = [span for span in spans if not known[span.key].ready]
        inits = await sync_to_async(_inits)(missing, now) if missing else ()
        covered = {span.key for span in spans}
        missing_keys = tuple(key for key in wanted if key not in covered)
    # A window of a budget that no longer exists (the config snapshot is a second behind)
    # has nothing in the ledger to count: it starts empty.
    inits += tuple(WindowInit(key, 0, SLACK_S) for key in missing_keys)
    written = await store.budget_prepare(inits) if inits else ()
    if written:
        log.info("prepared %d budget window(s) from the ledger: %s", len(written), written)
    return written


class LedgerBudgetWindows:
    """The runtime's :class:`~agents.runtime.ports.BudgetWindows` for Django: windows rebuilt
    from the ledger, one rebuild at a time per process (concurrent admissions that met unknown
    windows share it)."""

    def __init__(
        self, store: StateStore, *, before: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """``before``: run ahead of each rebuild, so that the records it reads are complete
        (the engine's: the journal written again if Redis lost it, then drained)."""
        self._store = store
        self._before = before
        self._running: asyncio.Task[tuple[str, ...]] | None = None
        self._wanted: set[str] = set()

    async def prepare(self, holds: tuple[BudgetHold, ...]) -> None:
        self._wanted.update(h.key for h in holds)
        if self._running is None or self._running.done():
            wanted, self._wanted = tuple(self._wanted), set()
            self._running = asyncio.ensure_future(self._rebuild(wanted))
        try:
            await asyncio.shield(self._running)
        except (StateUnavailable, BudgetsUnavailable):
            raise
        except Exception as exc:  # the database, most likely
            raise BudgetsUnavailable(f"budget windows could not be rebuilt: {exc}") from exc
        if self._wanted & {h.key for h in holds}:
            # Asked for while another rebuild ran: one more, with what it did not cover.
            await self.prepare(holds)

    async def _rebuild(self, keys: tuple[str, ...]) -> tuple[str, ...]:
        try:
            async with asyncio.timeout(REBUILD_TIMEOUT_S):
                if self._before is not None:
                    try:
                        await self._before()
                    except Exception:  # the rebuild still counts what the database has
                        log.warning("could not bring the records up to date", exc_info=True)
                return await budget_windows_rebuild(store=self._store, keys=keys)
        except TimeoutError:
            raise BudgetsUnavailable(
                f"budget windows could not be rebuilt within {REBUILD_TIMEOUT_S:g} s"
            ) from None
