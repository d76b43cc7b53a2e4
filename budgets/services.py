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
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Case, Count, F, IntegerField, Min, Q, Sum, Value, When
from django.db.models.functions import TruncMinute
from django.utils import timezone

from agents.config.live import LiveConfig
from agents.models import MONEY_MAX, SLO_DEFAULT_LATENCY_MS, Agent, Execution
from agents.runtime.budgets import window_bounds
from agents.runtime.state import BudgetWindow
from budgets.incidents import budget_incidents_sync
from budgets.models import (
    ALL_AGENTS,
    LATENCY_BUCKETS_MS,
    Budget,
    SpendEntry,
    SpendRollup,
    TrafficRollup,
    TrafficStep,
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
from budgets.series import TRAFFIC_FIELDS, TrafficTotals
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


# --- rollups ---------------------------------------------------------------------------------

FINISHED_STATUSES = ("succeeded", "degraded", "failed", "cancelled")
SLI_VALID_STATUSES = ("succeeded", "degraded", "failed")  # what an SLI counts (budgets.slos)
_ROLLUP_VALUES = (
    "requests",
    "succeeded",
    "degraded",
    "failed",
    "cancelled",
    "cached",
    "fallbacks",
    "fallback_reasons",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
    "latency_sum_ms",
    "latency_count",
    "latency_buckets",
    "model_choices",
    "updated_at",
)


def _latency_bucket() -> Case:
    whens = [When(latency_ms__isnull=True, then=Value(-1))]
    whens += [
        When(latency_ms__lte=bound, then=Value(index))
        for index, bound in enumerate(LATENCY_BUCKETS_MS)
    ]
    return Case(*whens, default=Value(len(LATENCY_BUCKETS_MS)), output_field=IntegerField())


def _group_add(into: SpendRollup | TrafficTotals, g: Mapping[str, Any]) -> None:
    """Fold one group of the rollups' grouped aggregate over executions (status, cached,
    fallback, model choice and latency bucket; counts and sums) into a rollup's totals: the
    daily ``SpendRollup`` row and the traffic minutes add them up the same way."""
    n = g["n"]
    into.requests += n
    setattr(into, g["status"], getattr(into, g["status"]) + n)
    if g["cached"]:
        into.cached += n
    if g["fallback_used"]:
        into.fallbacks += n
        reason = g["fallback_reason"] or ""
        into.fallback_reasons[reason] = into.fallback_reasons.get(reason, 0) + n
    into.input_tokens += g["tokens_in"] or 0
    into.output_tokens += g["tokens_out"] or 0
    into.cost_usd += g["cost"] or 0
    into.saved_usd += g["saved"] or 0
    if g["bucket"] >= 0:
        into.latency_sum_ms += g["latency"] or 0
        into.latency_count += n
        into.latency_buckets[g["bucket"]] += n
    into.model_choices[g["model_choice"]] = into.model_choices.get(g["model_choice"], 0) + n


def rollup_day_refresh(*, day: date) -> int:
    """Recompute ``day``'s (UTC) rollups from its finished executions; returns the rows kept.

    Replace, not increment: rows are upserted with the recomputed totals and rows whose group
    has no execution any more are deleted, so running it again (or concurrently) is harmless.
    Two queries read (one grouped aggregate, the existing keys) and up to two write.
    """
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    groups = (
        Execution.objects.filter(
            created_at__gte=start,
            created_at__lt=start + timedelta(days=1),
            status__in=FINISHED_STATUSES,
        )
        .annotate(bucket=_latency_bucket())
        .values(
            "agent_name",
            "model",
            "api_key_id",
            "status",
            "cached",
            "fallback_used",
            "fallback_reason",
            "model_choice",
            "bucket",
        )
        .annotate(
            n=Count("id"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            saved=Sum("saved_usd"),
            latency=Sum("latency_ms"),
        )
        .order_by()
    )
    stamp = timezone.now()
    size = len(LATENCY_BUCKETS_MS) + 1
    rows: dict[tuple[str, str, int], SpendRollup] = {}
    for g in groups:
        key = (g["agent_name"], g["model"], g["api_key_id"] or 0)
        row = rows.get(key)
        if row is None:
            row = rows[key] = SpendRollup(
                day=day,
                agent_name=key[0],
                model=key[1],
                api_key_id=key[2],
                cost_usd=Decimal(0),
                saved_usd=Decimal(0),
                latency_buckets=[0] * size,
                model_choices={},
                fallback_reasons={},
                updated_at=stamp,
            )
        _group_add(row, g)
    with transaction.atomic():
        if rows:
            SpendRollup.objects.bulk_create(
                list(rows.values()),
                update_conflicts=True,
                unique_fields=["day", "agent_name", "model", "api_key_id"],
                update_fields=list(_ROLLUP_VALUES),
            )
        stale = [
            pk
            for pk, *key in SpendRollup.objects.filter(day=day).values_list(
                "pk", "agent_name", "model", "api_key_id"
            )
            if tuple(key) not in rows
        ]
        if stale:
            SpendRollup.objects.filter(pk__in=stale).delete()
    return len(rows)


def rollups_refresh(*, now: datetime | None = None, days: int = 2) -> int:
    """Recompute today's and yesterday's (UTC) rollups: yesterday's too because records reach
    the database late (write-behind; a journal held back while the database was down)."""
    today = (now or timezone.now()).astimezone(UTC).date()
    return sum(rollup_day_refresh(day=today - timedelta(days=offset)) for offset in range(days))


# --- traffic rollups (minute, hour, day rows per agent) ---------------------------------------

TRAFFIC_RECOMPUTE_MINUTES = 15  # minute rows recomputed from the executions on every run
TRAFFIC_KEEP: dict[int, timedelta] = {
    TrafficStep.MINUTE: timedelta(hours=48),
    TrafficStep.HOUR: timedelta(days=35),
    TrafficStep.DAY: timedelta(days=400),
}
TRAFFIC_PRUNE_BATCH = 2000  # rows deleted per step and run, at most
_TRAFFIC_VALUES = (
    "requests",
    "succeeded",
    "degraded",
    "failed",
    "cancelled",
    "cached",
    "fallbacks",
    "fallback_reasons",
    "retries",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "saved_usd",
    "latency_sum_ms",
    "latency_count",
    "latency_buckets",
    "model_choices",
    "slow",
    "updated_at",
)


def _floor(at: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, UTC)


def _traffic_replace(
    step: int, first: datetime, end: datetime, rows: Mapping[tuple[datetime, str], TrafficTotals]
) -> None:
    """Make the ``step`` rows with ``first <= start < end`` exactly ``rows``: upsert them and
    delete the others (a group that lost its executions)."""
    stamp = timezone.now()
    if rows:
        TrafficRollup.objects.bulk_create(
            [
                TrafficRollup(
                    step_s=step,
                    start=start,
                    agent_name=agent,
                    updated_at=stamp,
                    **totals.rollup_values(),
                )
                for (start, agent), totals in rows.items()
            ],
            update_conflicts=True,
            unique_fields=["step_s", "start", "agent_name"],
            update_fields=list(_TRAFFIC_VALUES),
        )
    stale = [
        pk
        for pk, start, agent in TrafficRollup.objects.filter(
            step_s=step, start__gte=first, start__lt=end
        ).values_list("pk", "start", "agent_name")
        if (start, agent) not in rows
    ]
    if stale:
        TrafficRollup.objects.filter(pk__in=stale).delete()


def _slow() -> Sum:
    """The count of a group's valid executions (succeeded, degraded, failed) slower than their
    agent's ``slo_latency_ms``: the latency SLI's bad events. One query reads the thresholds
    that differ from the default; an agent that no longer exists has the default."""
    thresholds = dict(
        Agent.objects.exclude(slo_latency_ms=SLO_DEFAULT_LATENCY_MS).values_list(
            "name", "slo_latency_ms"
        )
    )
    whens = [
        When(Q(agent_name=name) & Q(latency_ms__gt=ms), then=Value(1))
        for name, ms in sorted(thresholds.items())
    ]
    whens += [When(agent_name=name, then=Value(0)) for name in sorted(thresholds)]
    whens.append(When(latency_ms__gt=SLO_DEFAULT_LATENCY_MS, then=Value(1)))
    valid = Q(status__in=SLI_VALID_STATUSES)
    return Sum(Case(*whens, default=Value(0), output_field=IntegerField()), filter=valid)


def _traffic_minutes(first: datetime, end: datetime) -> dict[tuple[datetime, str], TrafficTotals]:
    """Minute rows of the finished executions created in ``[first, end)``, each agent's and the
    every-agent (``ALL_AGENTS``) ones: one grouped query (and one for the agents' latency
    thresholds, ``_slow``)."""
    slow = _slow()
    groups = (
        Execution.objects.filter(
            created_at__gte=first, created_at__lt=end, status__in=FINISHED_STATUSES
        )
        .annotate(
            minute=TruncMinute("created_at", tzinfo=UTC),
            bucket=_latency_bucket(),
            extra=Case(
                When(attempts__gt=1, then=F("attempts") - 1),
                default=Value(0),
                output_field=IntegerField(),
            ),
        )
        .values(
            "minute",
            "agent_name",
            "status",
            "cached",
            "fallback_used",
            "fallback_reason",
            "model_choice",
            "bucket",
        )
        .annotate(
            n=Count("id"),
            retries=Sum("extra"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            saved=Sum("saved_usd"),
            latency=Sum("latency_ms"),
            slow=slow,
        )
        .order_by()
    )
    rows: dict[tuple[datetime, str], TrafficTotals] = {}
    for g in groups:
        key = (g["minute"].astimezone(UTC), g["agent_name"])
        t = rows.get(key)
        if t is None:
            t = rows[key] = TrafficTotals()
        _group_add(t, g)
        t.retries += g["retries"] or 0
        t.slow += g["slow"] or 0
    every: dict[tuple[datetime, str], TrafficTotals] = {}
    for (start, _agent), totals in rows.items():
        total = every.get((start, ALL_AGENTS))
        if total is None:
            total = every[(start, ALL_AGENTS)] = TrafficTotals()
        total.add(totals.rollup_values())
    return rows | every


def _traffic_fold(
    step: int, into: int, first: datetime, end: datetime
) -> dict[tuple[datetime, str], TrafficTotals]:
    """The ``into`` rows of ``[first, end)`` as the sums of their ``step`` rows: one query."""
    rows: dict[tuple[datetime, str], TrafficTotals] = {}
    for row in (
        TrafficRollup.objects.filter(step_s=step, start__gte=first, start__lt=end)
        .order_by()
        .values(*TRAFFIC_FIELDS)
    ):
        key = (_floor(row["start"], into), row["agent_name"])
        t = rows.get(key)
        if t is None:
            t = rows[key] = TrafficTotals()
        t.add(row)
    return rows


def traffic_rollups_prune(*, now: datetime, batch: int = TRAFFIC_PRUNE_BATCH) -> int:
    """Delete up to ``batch`` rows per step older than ``TRAFFIC_KEEP``; returns rows deleted."""
    deleted = 0
    for step, keep in TRAFFIC_KEEP.items():
        old = list(
            TrafficRollup.objects.filter(step_s=step, start__lt=now - keep)
            .order_by("start")
            .values_list("pk", flat=True)[:batch]
        )
        if old:
            deleted += TrafficRollup.objects.filter(pk__in=old).delete()[0]
    return deleted


def traffic_rollups_refresh(
    *, now: datetime | None = None, minutes: int = TRAFFIC_RECOMPUTE_MINUTES
) -> int:
    """Recompute the traffic rollups of the last ``minutes`` minutes; returns the minute rows kept.

    Replace, not increment (like :func:`rollup_day_refresh`): the minute rows of the executions
    created from the start of the minute ``minutes - 1`` before ``now``'s up to the end of
    ``now``'s minute come from one grouped aggregate over that slice of ``Execution`` (index
    ``execution_time``); then each hour those minutes touch is recomputed as the sum of its minute
    rows, and each day those hours touch as the sum of its hour rows. Rows past
    ``TRAFFIC_KEEP`` are deleted in batches. Running it again, or concurrently, is harmless.

    Known limit: an execution that reaches the database (write-behind, a journal held back
    while the database was down) after its minute has left the recomputed slice is not counted
    in these rollups; the daily ``SpendRollup`` (today and yesterday recomputed) still counts it.
    Watermarks are issue 14. The count returned includes the every-agent rows.
    """
    if minutes < 1:
        raise ValidationFailed([f"minutes: {minutes} must be at least 1"])
    at = (now or timezone.now()).astimezone(UTC)
    end = _floor(at, TrafficStep.MINUTE) + timedelta(minutes=1)
    first = end - timedelta(minutes=minutes)
    hours = (_floor(first, TrafficStep.HOUR), _floor(end - timedelta(seconds=1), TrafficStep.HOUR))
    hours_end = hours[1] + timedelta(hours=1)
    days = (_floor(hours[0], TrafficStep.DAY), _floor(hours[1], TrafficStep.DAY))
    days_end = days[1] + timedelta(days=1)
    minute_rows = _traffic_minutes(first, end)
    with transaction.atomic():
        _traffic_replace(TrafficStep.MINUTE, first, end, minute_rows)
        _traffic_replace(
            TrafficStep.HOUR,
            hours[0],
            hours_end,
            _traffic_fold(TrafficStep.MINUTE, TrafficStep.HOUR, hours[0], hours_end),
        )
        _traffic_replace(
            TrafficStep.DAY,
            days[0],
            days_end,
            _traffic_fold(TrafficStep.HOUR, TrafficStep.DAY, days[0], days_end),
        )
    traffic_rollups_prune(now=at)
    return len(minute_rows)


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
