"""Writes for budgets and cost control: pause, resume and raise a budget; refresh the daily
rollups; reconcile the budget counters with the ledger; detect cost spikes; publish the budget
gauges. Budget writes are audited and bump the config version through the model's save signal
(``agents.config.live``), so every serving process enforces them within about a second.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Min, Sum
from django.utils import timezone

from agents.config.live import LiveConfig
from agents.models import MONEY_MAX
from agents.runtime.budgets import window_bounds
from agents.runtime.state import BudgetWindow
from budgets.incidents import budget_incidents_sync
from budgets.models import (
    Budget,
    SpendEntry,
)
from budgets.selectors import (
    BudgetSpan,
    BudgetStatus,
    budget_call_floors,
    budget_list,
    budget_spans,
    budget_statuses,
    budget_usage_read,
    budget_windows_read,
    ledger_micros,
    micros_to_usd,
)
from core.audit import audit_record
from core.errors import NotFound, ValidationFailed
from incidents.models import Incident, IncidentStatus, Severity
from incidents.services import incident_open, incident_resolve_by_key

log = logging.getLogger("breakwater.budgets")

UsageReader = Callable[[tuple[str, ...]], Mapping[str, tuple[int, int]]]
WindowReader = Callable[[tuple[str, ...]], Mapping[str, tuple[int, int] | BudgetWindow]]

_SIX_PLACES = Decimal("0.000001")
_EIGHT_PLACES = Decimal("0.00000001")
REASON_MAX = 500


# --- pause, resume, raise ------------------------------------------------------------------


def _locked(budget_id: int) -> Budget:
    budget = (
        Budget.objects.select_for_update(of=("self",))
        .select_related("agent", "api_key")
        .filter(pk=budget_id)
        .first()
    )
    if budget is None:
        raise NotFound(f"budget {budget_id} does not exist")
    return budget


def _snapshot(budget: Budget) -> dict[str, Any]:
    return {
        "paused": budget.paused,
        "limit_usd": budget.limit_usd,
        "raise_usd": budget.raise_usd,
        "raise_until": budget.raise_until,
    }


def budget_set_paused(
    *, budget_id: int, paused: bool, actor: str, reason: str = "", request_id: str = ""
) -> Budget:
    """Pause (every call under the budget is refused: its limit counts as 0) or resume it."""
    with transaction.atomic():
        budget = _locked(budget_id)
        if budget.paused == paused:
            return budget
        before = _snapshot(budget)
        budget.paused = paused
        budget.save(update_fields=["paused", "updated_at"])
        audit_record(
            actor=actor,
            action="budget_pause" if paused else "budget_resume",
            target_type="budget",
            target_id=str(budget.pk),
            before=before,
            after=_snapshot(budget),
            reason=reason,
            request_id=request_id,
        )
    log.info("budget %s %s by %s", budget.pk, "paused" if paused else "resumed", actor)
    return budget


def budget_pause(*, budget_id: int, actor: str, reason: str = "") -> Budget:
    return budget_set_paused(budget_id=budget_id, paused=True, actor=actor, reason=reason)


def budget_resume(*, budget_id: int, actor: str, reason: str = "") -> Budget:
    return budget_set_paused(budget_id=budget_id, paused=False, actor=actor, reason=reason)


def _amount(value: Any, field: str) -> Decimal:
    if isinstance(value, bool):
        raise ValidationFailed([f"{field}: must be a number"])
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValidationFailed([f"{field}: must be a number"]) from None
    if not amount.is_finite():
        raise ValidationFailed([f"{field}: must be a finite number"])
    if amount <= 0:
        raise ValidationFailed([f"{field}: must be positive"])
    if amount >= MONEY_MAX:
        raise ValidationFailed([f"{field}: must be less than {MONEY_MAX}"])
    if amount != amount.quantize(_SIX_PLACES):
        raise ValidationFailed([f"{field}: at most 6 decimal places"])
    return amount


def budget_raise(
    *,
    budget_id: int,
    amount_usd: Any,
    reason: str,
    actor: str,
    now: datetime | None = None,
    request_id: str = "",
) -> Budget:
    """Raise the budget's limit by ``amount_usd`` until its current window ends.

    A second raise in the same window adds to the first (and still ends with the window); a
    raise left over from an earlier window is replaced. The raise needs a reason (audited).
    """
    amount = _amount(amount_usd, "amount_usd")
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed(["reason: must not be empty"])
    if len(reason) > REASON_MAX:
        raise ValidationFailed([f"reason: must be at most {REASON_MAX} characters"])
    now = now or timezone.now()
    with transaction.atomic():
        budget = _locked(budget_id)
        before = _snapshot(budget)
        _, _, end = window_bounds(_rule(budget), now.timestamp())
        active = (
            budget.raise_usd
            if budget.raise_usd is not None
            and budget.raise_until is not None
            and budget.raise_until > now
            else Decimal(0)
        )
        total = active + amount
        if total >= MONEY_MAX:
            raise ValidationFailed(
                [f"amount_usd: this window's raises would total {total}; must be less than "
                 f"{MONEY_MAX}"]
            )  # fmt: skip
        budget.raise_usd = total
        budget.raise_until = datetime.fromtimestamp(end, UTC)
        budget.save(update_fields=["raise_usd", "raise_until", "updated_at"])
        audit_record(
            actor=actor,
            action="budget_raise",
            target_type="budget",
            target_id=str(budget.pk),
            before=before,
            after=_snapshot(budget) | {"amount_usd": amount},
            reason=reason,
            request_id=request_id,
        )
    log.info("budget %s raised by $%s until %s by %s", budget.pk, amount, budget.raise_until, actor)
    return budget


def _rule(budget: Budget) -> Any:
    from budgets.rules import budget_rule

    return budget_rule(budget)


# --- gauges ----------------------------------------------------------------------------------


def budgets_observe(
    *,
    now: datetime | None = None,
    usage_reader: WindowReader = budget_windows_read,
    floors: Mapping[int, int] | None = None,
) -> list[BudgetStatus]:
    """Compute every budget's state and forecast (the periodic job), and open or resolve the
    budgets' incidents (:mod:`budgets.incidents`). The budget gauges are not published from
    here: ``/metrics`` computes them at scrape time (budgets/metrics.py). ``floors`` (budget id
    -> micro-USD of the smallest worst-case call it must admit) defaults to the live
    configuration's (:func:`job_call_floors`)."""
    now = now or timezone.now()
    budgets = budget_list()
    spans = budget_spans(budgets, now=now)
    usage = usage_reader(tuple(span.key for span in spans))
    if floors is None:
        floors = job_call_floors(budgets)
    statuses = budget_statuses(spans=spans, usage=usage, now=now, floors=floors)
    try:
        budget_incidents_sync(statuses, now=now)
    except Exception:  # the next run tries again
        log.exception("could not open or resolve budget incidents")
    return statuses


_job_config: LiveConfig | None = None
_job_config_lock = threading.Lock()


def job_call_floors(budgets: list[Budget]) -> dict[int, int]:
    """:func:`budget_call_floors` from a job: on a configuration kept for the jobs of this
    process (one query when the config version has not moved since the last call)."""
    global _job_config
    with _job_config_lock:
        if _job_config is None:
            _job_config = LiveConfig()
        try:
            _job_config.reload()
        except Exception:  # keep the floors of the last configuration that loaded
            log.exception("could not reload the configuration for the budget floors")
        return budget_call_floors(budgets, _job_config)


# --- reconcile ---------------------------------------------------------------------------------

RECONCILE_SETTLE_S = 2.0  # > the recorder's drain interval (0.2 s) many times over


@dataclass(frozen=True)
class ReconcileResult:
    budget_id: int
    window_id: str
    counter_before: int  # micro-USD spent, read before the ledger
    ledger: int  # micro-USD charged in the ledger for the window
    counter_after: int  # micro-USD spent, read after the ledger
    ok: bool

    @property
    def drift(self) -> int:
        """Ledger minus counter: negative = the ledger misses spend the counter has; positive =
        the counter misses spend the ledger has (a lost or reset counter)."""
        if self.ledger < self.counter_before:
            return self.ledger - self.counter_before
        if self.ledger > self.counter_after:
            return self.ledger - self.counter_after
        return 0


def drift_key(span: BudgetSpan) -> str:
    return f"ledger_drift:budget:{span.rule.id}:{span.window_id}"


def budgets_reconcile(
    *,
    now: datetime | None = None,
    usage_reader: UsageReader = budget_usage_read,
    settle_s: float = RECONCILE_SETTLE_S,
    sleep: Callable[[float], None] = time.sleep,
) -> list[ReconcileResult]:
    """Prove that each budget's counter and the ledger agree for its current window.

    The counter's ``spent`` for window W must equal the sum over the ledger entries in W (of
    the executions the budget covers) of ``to_micros(cost_usd, up=True)`` (stored as
    ``SpendEntry.charged_micros``). Under traffic the two never match at one instant: the
    runtime settles a counter first and the ledger entry reaches the database a moment later
    (write-behind). So the counter is read, then (after ``settle_s``, long enough for the
    recorder to drain what was settled) the ledger, then the counter again; consistency means
    ``counter_before <= ledger <= counter_after``, which is exact equality when the window is
    quiet. A ledger below the first read lost records; above the second, the counter lost spend
    (a reset, a restarted embedded process). Either opens a ``ledger_drift`` incident (one per
    budget window) with the numbers, and is logged; a later agreement resolves it.

    A budget created during its current window is compared from its creation on (its counter
    started then: ``BudgetSpan.counted_from``).

    Embedded mode keeps the counters in the serve process's memory (``MemoryState``). This job
    then runs in that same process (the embedded scheduler hands it to the in-process worker),
    so ``budget_usage_read`` sees the very counters the traffic fills. Distributed mode reads
    them from Redis.
    """
    now = now or timezone.now()
    spans = budget_spans(budget_list(), now=now)
    if not spans:
        _drifts_closed(_open_drifts(), spans)
        return []
    keys = tuple(span.key for span in spans)
    before = usage_reader(keys)
    if settle_s > 0:
        sleep(settle_s)
    charged_by_key = ledger_micros(spans)
    ledger = [charged_by_key[span.key] for span in spans]
    after = usage_reader(keys)
    open_drifts = _open_drifts()
    results = []
    for span, charged in zip(spans, ledger, strict=True):
        c1 = before.get(span.key, (0, 0))[0]
        c2 = max(c1, after.get(span.key, (0, 0))[0])
        result = ReconcileResult(span.rule.id, span.window_id, c1, charged, c2, c1 <= charged <= c2)
        results.append(result)
        numbers = {
            "budget_id": span.rule.id,
            "scope": span.budget.scope,
            "target": span.budget.target,
            "window": span.window_id,
            "counter_micros": c1 if c1 == c2 else [c1, c2],
            "ledger_micros": charged,
            "drift_micros": result.drift,
            "counter_usd": str(micros_to_usd(c2)),
            "ledger_usd": str(micros_to_usd(charged)),
        }
        key = drift_key(span)
        if not result.ok:
            log.error(
                "ledger drift: budget %s (%s %s) window %s: counter %s micro-USD, ledger %s",
                span.rule.id,
                span.budget.scope,
                span.budget.target,
                span.window_id,
                numbers["counter_micros"],
                charged,
            )
            incident_open(
                kind="ledger_drift",
                dedup_key=key,
                title=f"Budget counter and ledger disagree: {span.budget.scope} "
                f"{span.budget.target} ({span.window_id})",
                message=f"counter {numbers['counter_micros']} micro-USD, ledger {charged} "
                f"micro-USD (drift {result.drift:+d})",
                severity=Severity.MAJOR,
                agent_name=span.budget.agent.name if span.budget.agent is not None else "",
                data=numbers,
            )
        elif key in open_drifts:
            incident_resolve_by_key(
                dedup_key=key, message="counter and ledger agree again", data=numbers
            )
    _drifts_closed(open_drifts, spans)
    return results


def _open_drifts() -> set[str]:
    return set(
        Incident.objects.filter(kind="ledger_drift")
        .exclude(status=IncidentStatus.RESOLVED)
        .values_list("dedup_key", flat=True)
    )


def _drifts_closed(open_drifts: set[str], spans: list[BudgetSpan]) -> None:
    """A drift of a window that has ended (or of a deleted budget) is no longer reconciled: it
    is resolved, its last figures staying in the timeline."""
    for key in sorted(open_drifts - {drift_key(span) for span in spans}):
        incident_resolve_by_key(
            dedup_key=key,
            message="the budget window ended (or the budget was deleted): no longer reconciled; "
            "the last figures are the timeline's previous entry",
        )


# --- cost spikes -------------------------------------------------------------------------------

SPIKE_RECENT = timedelta(minutes=5)
SPIKE_HISTORY = timedelta(hours=6)
SPIKE_RESOLVE_FACTOR = 1.5


@dataclass(frozen=True)
class SpikeCheck:
    agent: str
    recent_usd: Decimal
    baseline_usd: Decimal | None  # average spend per 5 minutes; None = no history
    action: str  # opened | resolved | open | quiet


def spike_key(agent: str) -> str:
    return f"cost_spike:{agent}"


def cost_spike_detect(
    *,
    now: datetime | None = None,
    factor: float | None = None,
    min_usd: float | Decimal | None = None,
) -> list[SpikeCheck]:
    """Compare each agent's spend over the last 5 minutes with its baseline, the average spend
    per 5 minutes over the 6 hours before (counted from its first entry in those 6 hours, so a
    young agent is not diluted by hours it did not exist). Without history there is no
    baseline and no alarm. Above ``factor`` x baseline (``BREAKWATER_COST_SPIKE_FACTOR``, 3) and
    above ``min_usd`` (``BREAKWATER_COST_SPIKE_MIN_USD``, $1) a ``cost_spike`` incident opens
    for the agent (one at a time); it resolves once the 5-minute spend is back under 1.5x.
    Three queries when nothing changes.
    """
    now = now or timezone.now()
    factor = settings.BREAKWATER_COST_SPIKE_FACTOR if factor is None else factor
    floor = Decimal(str(settings.BREAKWATER_COST_SPIKE_MIN_USD if min_usd is None else min_usd))
    recent_start = now - SPIKE_RECENT
    recent = dict(
        SpendEntry.objects.filter(at__gt=recent_start, at__lte=now)
        .values("agent_name")
        .annotate(total=Sum("cost_usd"))
        .order_by()
        .values_list("agent_name", "total")
    )
    history = {
        row["agent_name"]: (row["total"], row["first"])
        for row in SpendEntry.objects.filter(
            at__gt=recent_start - SPIKE_HISTORY, at__lte=recent_start
        )
        .values("agent_name")
        .annotate(total=Sum("cost_usd"), first=Min("at"))
        .order_by()
    }
    open_spikes = set(
        Incident.objects.filter(kind="cost_spike")
        .exclude(status=IncidentStatus.RESOLVED)
        .values_list("agent_name", flat=True)
    )
    checks = []
    for agent in sorted(set(recent) | open_spikes):
        # Sums come back as floats from SQLite: back to the columns' 8 places.
        spent = Decimal(recent.get(agent) or 0).quantize(_EIGHT_PLACES)
        baseline: Decimal | None = None
        total, first = history.get(agent, (None, None))
        if total and first is not None:
            slots = max(1, math.ceil((recent_start - first) / SPIKE_RECENT))
            baseline = (Decimal(total) / slots).quantize(_EIGHT_PLACES)
        numbers = {
            "recent_usd": str(spent),
            "baseline_usd": None if baseline is None else str(baseline),
            "ratio": None if not baseline else round(float(spent / baseline), 2),
            "factor": factor,
            "min_usd": str(floor),
            "window_s": SPIKE_RECENT.total_seconds(),
            "history_s": SPIKE_HISTORY.total_seconds(),
        }
        action = "quiet"
        if agent in open_spikes:
            action = "open"
            calm = spent == 0 or (
                baseline is not None and spent < baseline * Decimal(str(SPIKE_RESOLVE_FACTOR))
            )
            if calm:
                incident_resolve_by_key(
                    dedup_key=spike_key(agent),
                    message=f"spend back to ${spent} per 5 min (baseline ${baseline})",
                    data=numbers,
                )
                action = "resolved"
        elif baseline is not None and spent > baseline * Decimal(str(factor)) and spent > floor:
            incident_open(
                kind="cost_spike",
                dedup_key=spike_key(agent),
                title=f"Cost spike on {agent}: ${spent:.2f} in 5 min, "
                f"{numbers['ratio']}x its baseline",
                message=f"${spent} in the last 5 minutes against a baseline of ${baseline} per "
                f"5 minutes over the previous 6 hours",
                severity=Severity.MAJOR,
                agent_name=agent,
                data=numbers,
            )
            log.warning("cost spike on %s: $%s in 5 min vs baseline $%s", agent, spent, baseline)
            action = "opened"
        checks.append(SpikeCheck(agent, spent, baseline, action))
    return checks
