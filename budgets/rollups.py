"""The rollups: the daily ``SpendRollup`` and the minute/hour/day ``TrafficRollup`` rows, kept
from ``Execution`` by one job, ``rollups_advance``, whose work is proportional to the records
written since its last run (docs/DECISIONS.md #23).

How a run knows what is new: every write that changes what the rollups count stamps the row's
``seq`` (a trigger, agents migration 0012): on PostgreSQL the writing transaction's id, on
SQLite a counter. The watermark row (``RollupWatermark``) holds the mark of the last run: on
PostgreSQL its snapshot (``pg_current_snapshot()``), so the new rows are exactly those whose
transaction was not visible in it (``seq >= xmax`` or ``seq`` among its in-progress ids) —
commit order decides, not id order, so a transaction that commits late, a journal drained
hours after a database outage and several writers are all counted; on SQLite (one writer at a
time) the largest ``seq`` seen. The mark is taken before the new rows are read, so a row
committed in between is read twice, never missed: every step is a recomputation, and reading
a row again changes nothing.

What a run recomputes: each UTC minute that holds a new row version, from all of that minute's
finished executions (one grouped query over those minutes). The traffic minute rows are
replaced with the result, each touched hour is refolded from its minute rows and each touched
day from its hour rows (an hour older than the minute rows are kept is recomputed from the
executions). The daily spend is kept through ``SpendMinute`` (the same minutes per agent,
model and key, kept for today and yesterday): the touched minutes' rows are replaced and the
difference from what they held before is added to the day's ``SpendRollup`` rows, so the sum of
a day's minute rows is its rollup row at all times. A day before the minute rows
(``RollupWatermark.spend_from``) is recomputed whole, which only a record late by more than a
day causes. Runs are serialized by a lock on the watermark row (one transaction each; on
PostgreSQL a run that finds it locked returns at once, the running one folds in what it would
have), so two concurrent runs, or one run twice, give the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, F, Func, IntegerField, Q, QuerySet, Sum, Value, When
from django.db.models.functions import TruncHour, TruncMinute
from django.utils import timezone

from agents.executions.retention import retention_cutoff
from agents.models import SLO_DEFAULT_LATENCY_MS, Agent, Execution
from budgets.models import (
    ALL_AGENTS,
    LATENCY_BUCKETS_MS,
    RollupWatermark,
    SpendMinute,
    SpendRollup,
    TrafficRollup,
    TrafficStep,
)
from budgets.series import TRAFFIC_FIELDS, TrafficTotals
from core.errors import ValidationFailed

log = logging.getLogger("breakwater.rollups")

FINISHED_STATUSES = ("succeeded", "degraded", "failed", "cancelled")
SLI_VALID_STATUSES = ("succeeded", "degraded", "failed")  # what an SLI counts (budgets.slos)
WATERMARK = "executions"  # RollupWatermark.name of the one watermark
# What a daily spend row holds beyond its key (day, agent, model, key): the traffic counts but
# the retries and the slow count, which only the traffic rows keep.
_SPEND_VALUES = tuple(
    f for f in TRAFFIC_FIELDS if f not in ("start", "agent_name", "retries", "slow")
)
_ROLLUP_VALUES = (*_SPEND_VALUES, "updated_at")
TRAFFIC_RECOMPUTE_MINUTES = 15  # traffic_rollups_refresh's default window
TRAFFIC_KEEP: dict[int, timedelta] = {
    TrafficStep.MINUTE: timedelta(hours=48),
    TrafficStep.HOUR: timedelta(days=35),
    TrafficStep.DAY: timedelta(days=400),
}
TRAFFIC_PRUNE_BATCH = 2000  # rows deleted per step and run, at most
SPEND_MINUTE_PRUNE_BATCH = 5000  # SpendMinute rows of days before spend_from deleted per run
RANGES_PER_QUERY = 200  # minute ranges OR'ed in one grouped query
# What a traffic row's upsert writes: every column the selectors read but its key, and the stamp.
_TRAFFIC_VALUES = (*(f for f in TRAFFIC_FIELDS if f not in ("start", "agent_name")), "updated_at")
_MINUTE = timedelta(minutes=1)

Range = tuple[datetime, datetime]  # [start, end)
SpendKey = tuple[Any, str, str, int]  # (minute start or day, agent, model, api key id or 0)
TrafficKey = tuple[datetime, str]  # (bucket start, agent or ALL_AGENTS)


# --- the grouped aggregate -------------------------------------------------------------------


def _latency_bucket() -> Case:
    whens = [When(latency_ms__isnull=True, then=Value(-1))]
    whens += [
        When(latency_ms__lte=bound, then=Value(index))
        for index, bound in enumerate(LATENCY_BUCKETS_MS)
    ]
    return Case(*whens, default=Value(len(LATENCY_BUCKETS_MS)), output_field=IntegerField())


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


def _grouped(where: Q, *, trunc: Func | None, by_key: bool) -> QuerySet[Any, dict[str, Any]]:
    """The one aggregate every rollup is made of: the finished executions matching ``where``
    grouped by bucket (``trunc`` of ``created_at``, as ``at``; none: the whole set), agent,
    [model and API key,] status, cached, fallback, model choice and latency bucket, with their
    counts and sums (and the agents' latency thresholds, ``_slow``: one more query)."""
    fields = ["agent_name", "status", "cached", "fallback_used", "fallback_reason"]
    fields += ["model_choice", "bucket"]
    rows = Execution.objects.filter(where, status__in=FINISHED_STATUSES).annotate(
        bucket=_latency_bucket(),
        extra=Case(
            When(attempts__gt=1, then=F("attempts") - 1),
            default=Value(0),
            output_field=IntegerField(),
        ),
    )
    if trunc is not None:
        rows = rows.annotate(at=trunc)
        fields.insert(0, "at")
    if by_key:
        fields += ["model", "api_key_id"]
    grouped: QuerySet[Any, dict[str, Any]] = (
        rows.values(*fields)
        .annotate(
            n=Count("id"),
            retries=Sum("extra"),
            tokens_in=Sum("input_tokens"),
            tokens_out=Sum("output_tokens"),
            cost=Sum("cost_usd"),
            saved=Sum("saved_usd"),
            latency=Sum("latency_ms"),
            slow=_slow(),
        )
        .order_by()
    )
    return grouped


def _group_add(into: TrafficTotals, g: Mapping[str, Any]) -> None:
    """Fold one group of :func:`_grouped` into a rollup's totals."""
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
    into.cost_usd += Decimal(str(g["cost"] or 0))
    into.saved_usd += Decimal(str(g["saved"] or 0))
    if g["bucket"] >= 0:
        into.latency_sum_ms += g["latency"] or 0
        into.latency_count += n
        into.latency_buckets[g["bucket"]] += n
    into.model_choices[g["model_choice"]] = into.model_choices.get(g["model_choice"], 0) + n
    into.retries += g["retries"] or 0
    into.slow += g["slow"] or 0


def _totals(rows: dict[Any, TrafficTotals], key: Any) -> TrafficTotals:
    found = rows.get(key)
    if found is None:
        found = rows[key] = TrafficTotals()
    return found


def _with_every_agent(rows: dict[TrafficKey, TrafficTotals]) -> dict[TrafficKey, TrafficTotals]:
    every: dict[TrafficKey, TrafficTotals] = {}
    for (start, _agent), totals in rows.items():
        _totals(every, (start, ALL_AGENTS)).add(totals.rollup_values())
    return rows | every


def _spend_values(totals: TrafficTotals) -> dict[str, Any]:
    values = totals.rollup_values()
    return {name: values[name] for name in _SPEND_VALUES}


def _as_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """A ``SpendMinute``/``SpendRollup`` row's values in the shape ``TrafficTotals.add`` reads."""
    return {"retries": 0, "slow": 0, **values}


def _floor(at: datetime, step: int) -> datetime:
    return datetime.fromtimestamp(int(at.timestamp()) // step * step, UTC)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _in(ranges: Iterable[Range], field: str = "created_at") -> Q:
    q = Q(pk__in=[])
    for first, end in ranges:
        q |= Q(**{f"{field}__gte": first, f"{field}__lt": end})
    return q


def _runs(starts: Iterable[datetime], step: timedelta) -> list[Range]:
    """Contiguous ``[first, end)`` ranges covering bucket ``starts`` of width ``step``."""
    ranges: list[Range] = []
    for start in sorted(set(starts)):
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + step)
        else:
            ranges.append((start, start + step))
    return ranges


# --- replacing rows ---------------------------------------------------------------------------


def _traffic_replace(
    step: int, ranges: list[Range], rows: Mapping[TrafficKey, TrafficTotals]
) -> None:
    """Make the ``step`` rows starting within ``ranges`` exactly ``rows``: upsert them and
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
            batch_size=1000,
        )
    if not ranges:
        return
    stale = [
        pk
        for pk, start, agent in TrafficRollup.objects.filter(
            _in(ranges, "start"), step_s=step
        ).values_list("pk", "start", "agent_name")
        if (start, agent) not in rows
    ]
    if stale:
        TrafficRollup.objects.filter(pk__in=stale).delete()


def _traffic_fold(step: int, into: int, ranges: list[Range]) -> dict[TrafficKey, TrafficTotals]:
    """The ``into`` rows of ``ranges`` as the sums of their ``step`` rows: one query."""
    rows: dict[TrafficKey, TrafficTotals] = {}
    for row in (
        TrafficRollup.objects.filter(_in(ranges, "start"), step_s=step)
        .order_by()
        .values(*TRAFFIC_FIELDS)
    ):
        _totals(rows, (_floor(row["start"], into), row["agent_name"])).add(row)
    return rows


def _traffic_refold(hours: list[Range], *, at: datetime | None = None) -> None:
    """Each hour of ``hours`` as the sum of its minute rows, then each day they touch as the
    sum of its hour rows."""
    if not hours:
        return
    _traffic_replace(
        TrafficStep.HOUR, hours, _traffic_fold(TrafficStep.MINUTE, TrafficStep.HOUR, hours)
    )
    _days_refold(hours, at=at)


def _days_refold(hours: list[Range], *, at: datetime | None = None) -> None:
    """Each day ``hours`` touch as the sum of its hour rows; with ``at``, only the days whose
    hour rows are all still kept (a day straddling the hour rows' prune keeps its row)."""
    starts = {
        _floor(start + timedelta(hours=h), TrafficStep.DAY)
        for start, end in hours
        for h in range(int((end - start) / timedelta(hours=1)))
    }
    if at is not None:
        starts = {d for d in starts if d >= at - TRAFFIC_KEEP[TrafficStep.HOUR]}
    days = _runs(starts, timedelta(days=1))
    if days:
        _traffic_replace(
            TrafficStep.DAY, days, _traffic_fold(TrafficStep.HOUR, TrafficStep.DAY, days)
        )


def _spend_minutes_replace(ranges: list[Range], rows: Mapping[SpendKey, TrafficTotals]) -> None:
    stamp = timezone.now()
    if rows:
        SpendMinute.objects.bulk_create(
            [
                SpendMinute(
                    start=start,
                    agent_name=agent,
                    model=model,
                    api_key_id=key,
                    updated_at=stamp,
                    **_spend_values(totals),
                )
                for (start, agent, model, key), totals in rows.items()
            ],
            update_conflicts=True,
            unique_fields=["start", "agent_name", "model", "api_key_id"],
            update_fields=list(_ROLLUP_VALUES),
            batch_size=1000,
        )
    stale = [
        pk
        for pk, *key in SpendMinute.objects.filter(_in(ranges, "start")).values_list(
            "pk", "start", "agent_name", "model", "api_key_id"
        )
        if tuple(key) not in rows
    ]
    if stale:
        SpendMinute.objects.filter(pk__in=stale).delete()


def _spend_days_write(
    rows: Mapping[SpendKey, TrafficTotals], *, replace_days: Iterable[date]
) -> None:
    """Upsert the ``SpendRollup`` rows ``rows`` (keyed by day) and delete those of
    ``replace_days`` not among them, and any left with no request."""
    stamp = timezone.now()
    kept = {key: totals for key, totals in rows.items() if totals.requests > 0}
    if kept:
        SpendRollup.objects.bulk_create(
            [
                SpendRollup(
                    day=day,
                    agent_name=agent,
                    model=model,
                    api_key_id=key,
                    updated_at=stamp,
                    **_spend_values(totals),
                )
                for (day, agent, model, key), totals in kept.items()
            ],
            update_conflicts=True,
            unique_fields=["day", "agent_name", "model", "api_key_id"],
            update_fields=list(_ROLLUP_VALUES),
            batch_size=1000,
        )
    emptied = [key for key, totals in rows.items() if totals.requests <= 0]
    q = Q(pk__in=[])
    for day, agent, model, key in emptied:
        q |= Q(day=day, agent_name=agent, model=model, api_key_id=key)
    days = sorted(set(replace_days))
    stale: list[int] = []
    if days:
        stale = [
            pk
            for pk, *key in SpendRollup.objects.filter(day__in=days).values_list(
                "pk", "day", "agent_name", "model", "api_key_id"
            )
            if tuple(key) not in kept
        ]
    if emptied or stale:
        SpendRollup.objects.filter(q | Q(pk__in=stale)).delete()


# --- full recomputes (a day, a window, a rebuild) --------------------------------------------


def rollup_day_refresh(*, day: date) -> int:
    """Recompute ``day``'s (UTC) ``SpendRollup`` rows whole from its finished executions;
    returns the rows kept. Replace, not increment: running it again is harmless.

    For days before ``RollupWatermark.spend_from`` (the refresh calls it for a late record
    there; the seeder for its history). A day the watermark covers is kept as the sum of its
    ``SpendMinute`` rows: rebuild it with :func:`rollups_rebuild` instead.
    """
    start = _day_start(day)
    rows: dict[SpendKey, TrafficTotals] = {}
    for g in _grouped(
        Q(created_at__gte=start, created_at__lt=start + timedelta(days=1)),
        trunc=None,
        by_key=True,
    ):
        _group_add(_totals(rows, (day, g["agent_name"], g["model"], g["api_key_id"] or 0)), g)
    with transaction.atomic():
        _spend_days_write(rows, replace_days=[day])
    return len(rows)


def _traffic_minutes(ranges: list[Range]) -> dict[TrafficKey, TrafficTotals]:
    rows: dict[TrafficKey, TrafficTotals] = {}
    for chunk in _chunks(ranges):
        for g in _grouped(_in(chunk), trunc=TruncMinute("created_at", tzinfo=UTC), by_key=False):
            _group_add(_totals(rows, (g["at"].astimezone(UTC), g["agent_name"])), g)
    return _with_every_agent(rows)


def _chunks(ranges: list[Range]) -> list[list[Range]]:
    return [ranges[i : i + RANGES_PER_QUERY] for i in range(0, len(ranges), RANGES_PER_QUERY)]


def traffic_rollups_prune(*, now: datetime, batch: int = TRAFFIC_PRUNE_BATCH) -> int:
    """Delete up to ``batch`` rows per step older than ``TRAFFIC_KEEP``; returns rows deleted."""
    deleted = 0
    for step, keep in TRAFFIC_KEEP.items():
        # In the order of the traffic_identity index, so the scan stops after ``batch`` rows
        # even with a long backlog (a seeded history: 436K minute rows, 1.2 s sorted by start).
        old = list(
            TrafficRollup.objects.filter(step_s=step, start__lt=now - keep)
            .order_by("step_s", "start", "agent_name")
            .values_list("pk", flat=True)[:batch]
        )
        if old:
            deleted += TrafficRollup.objects.filter(pk__in=old).delete()[0]
    return deleted


def traffic_rollups_refresh(
    *, now: datetime | None = None, minutes: int = TRAFFIC_RECOMPUTE_MINUTES
) -> int:
    """Recompute the traffic rollups of the last ``minutes`` minutes whole; returns the minute
    rows kept (the every-agent rows included).

    Replace, not increment: the minute rows of the executions created from the start of the
    minute ``minutes - 1`` before ``now``'s up to the end of ``now``'s minute come from one
    grouped aggregate over that slice of ``Execution`` (index ``execution_time``); each hour
    those minutes touch is then the sum of its minute rows, and each day those hours touch the
    sum of its hour rows. For the seeder and for a window rebuilt by hand: the job is
    :func:`rollups_advance`, which recomputes the minutes new records touch, however late.
    """
    if minutes < 1:
        raise ValidationFailed([f"minutes: {minutes} must be at least 1"])
    at = (now or timezone.now()).astimezone(UTC)
    end = _floor(at, TrafficStep.MINUTE) + _MINUTE
    window = [(end - timedelta(minutes=minutes), end)]
    minute_rows = _traffic_minutes(window)
    with transaction.atomic():
        _traffic_replace(TrafficStep.MINUTE, window, minute_rows)
        _traffic_refold(_hours_of(window))
    traffic_rollups_prune(now=at)
    return len(minute_rows)


def _hours_of(ranges: list[Range]) -> list[Range]:
    hour = timedelta(hours=1)
    starts = set()
    for first, end in ranges:
        at = _floor(first, TrafficStep.HOUR)
        while at < end:
            starts.add(at)
            at += hour
    return _runs(starts, hour)


# --- the watermark ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RollupRun:
    """What one refresh did."""

    rows: int  # row versions written since the previous run (read to find the minutes)
    minutes: int  # minutes recomputed from the executions
    hours_recomputed: int  # hours older than the minute rows, recomputed from the executions
    days_recomputed: int  # days before the spend minute rows, recomputed whole
    rebuilt: bool  # no mark yet: today and yesterday were rebuilt
    skipped: bool = False  # another run held the watermark: nothing done (PostgreSQL)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _mark_now() -> str:
    """What this run will have seen, taken before it reads anything."""
    with connection.cursor() as cursor:
        if _postgres():
            cursor.execute("SELECT pg_current_snapshot()::text")
        else:
            cursor.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM agents_execution WHERE seq IS NOT NULL"
            )
        return str(cursor.fetchone()[0])


def _unseen(mark: str) -> list[Q]:
    """The rows written by transactions a run with ``mark`` did not see, as conditions that
    each seek the ``execution_seq`` index (an ``OR`` would scan all of it)."""
    if not _postgres():
        return [Q(seq__gt=int(mark))]
    # xmin:xmax:xip — every transaction below xmax and not in xip was visible (or aborted).
    _xmin, xmax, xip = mark.split(":")
    running = {int(x) for x in xip.split(",") if x}
    # And this transaction's own rows, which no snapshot lists (the job writes none; a caller
    # that wrote executions in the same transaction has them recounted, never missed).
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id_if_assigned()::text")
        own = cursor.fetchone()[0]
    if own is not None:
        running.add(int(own))
    # Disjoint conditions (a row is counted once): the ids at or above xmax are in the first.
    later = [Q(seq__gte=int(xmax))]
    return later + [Q(seq=xid) for xid in sorted(running) if xid < int(xmax)]


def _watermark_locked(*, wait: bool = True) -> RollupWatermark | None:
    """The watermark row, locked for this transaction, so that runs take turns and each reads
    what the previous committed. On PostgreSQL a row lock (``wait=False``: None at once when
    another run holds it, since that run folds in what this one would); on SQLite the write
    lock, taken by writing the row first."""
    if _postgres():
        rows = RollupWatermark.objects.select_for_update(skip_locked=not wait)
        return rows.filter(name=WATERMARK).first()
    RollupWatermark.objects.filter(name=WATERMARK).update(updated_at=timezone.now())
    return RollupWatermark.objects.get(name=WATERMARK)


def rollups_advance(*, now: datetime | None = None) -> RollupRun:
    """The rollups job (``rollups-advance``, every 15 s): fold what was written since the last
    run into every rollup (see the module doc). One transaction, serialized with any other
    run; idempotent. The first run (no mark) rebuilds today and yesterday
    (:func:`rollups_rebuild`)."""
    at = (now or timezone.now()).astimezone(UTC)
    RollupWatermark.objects.get_or_create(name=WATERMARK)
    with transaction.atomic():
        mark = _watermark_locked(wait=False)
        if mark is None:  # a run is under way (the first one, a rebuild, takes minutes)
            return RollupRun(0, 0, 0, 0, rebuilt=False, skipped=True)
        if not mark.mark:
            return _rebuild(mark, at, days=2)
        taken = _mark_now()
        changed: dict[datetime, int] = {}
        for unseen in _unseen(mark.mark):
            for row in (
                Execution.objects.filter(unseen)
                .annotate(minute=TruncMinute("created_at", tzinfo=UTC))
                .values("minute")
                .annotate(n=Count("id"))
                .order_by()
            ):
                minute = row["minute"].astimezone(UTC)
                changed[minute] = changed.get(minute, 0) + row["n"]
        run = _refold(
            at, minutes=list(changed), rows=sum(changed.values()), spend_from=mark.spend_from
        )
        mark.mark = taken
        mark.rows_seen += run.rows
        mark.spend_from = _spend_from(mark.spend_from, at)
        mark.updated_at = timezone.now()
        mark.save(update_fields=["mark", "rows_seen", "spend_from", "updated_at"])
    _prune(at, mark.spend_from)  # housekeeping, after the lock: rows no run reads any more
    return run


def _spend_from(current: date | None, at: datetime) -> date:
    """The first day whose ``SpendMinute`` rows are kept: yesterday, never moving back."""
    yesterday = at.date() - timedelta(days=1)
    return yesterday if current is None else max(current, yesterday)


def _prune(at: datetime, spend_from: date) -> None:
    traffic_rollups_prune(now=at)
    old = list(
        SpendMinute.objects.filter(start__lt=_day_start(spend_from))
        .order_by("start")
        .values_list("pk", flat=True)[:SPEND_MINUTE_PRUNE_BATCH]
    )
    if old:
        SpendMinute.objects.filter(pk__in=old).delete()


def _refold(
    at: datetime, *, minutes: list[datetime], rows: int, spend_from: date | None
) -> RollupRun:
    """Recompute every rollup bucket the ``minutes`` touch (see the module doc)."""
    # Retention has deleted the raw rows before its cutoff: a bucket there recomputed from what
    # is left (a record drained or edited that late) would replace its rollups by almost
    # nothing, so those minutes are left out, loudly.
    kept_from = retention_cutoff(now=at, days=settings.BREAKWATER_RETENTION_DAYS)
    expired = [m for m in minutes if m < kept_from]
    if expired:
        log.warning(
            "%d record minute(s) before the retention cutoff %s (oldest %s): their rollups "
            "are kept as they are",
            len(expired),
            kept_from.isoformat(),
            min(expired).isoformat(),
        )
        minutes = [m for m in minutes if m >= kept_from]
    if not minutes:
        return RollupRun(rows, 0, 0, 0, rebuilt=False)
    covered_from = _day_start(spend_from) if spend_from is not None else None
    # Hours whose minute rows are all kept (the prune deletes minutes older than this).
    minute_horizon = at - TRAFFIC_KEEP[TrafficStep.MINUTE]
    hour_horizon = at - TRAFFIC_KEEP[TrafficStep.HOUR]
    fine = [m for m in minutes if _floor(m, TrafficStep.HOUR) >= minute_horizon]
    coarse = {
        _floor(m, TrafficStep.HOUR)
        for m in minutes
        if hour_horizon <= _floor(m, TrafficStep.HOUR) < minute_horizon
    }
    skipped = [m for m in minutes if _floor(m, TrafficStep.HOUR) < hour_horizon]
    if skipped:
        log.warning(
            "%d record minute(s) older than the hour rollups are kept (oldest %s): not in "
            "the traffic rollups",
            len(skipped),
            min(skipped),
        )
    ranges = _runs(fine, _MINUTE)
    traffic: dict[TrafficKey, TrafficTotals] = {}
    spend: dict[SpendKey, TrafficTotals] = {}
    for chunk in _chunks(ranges):
        for g in _grouped(_in(chunk), trunc=TruncMinute("created_at", tzinfo=UTC), by_key=True):
            minute = g["at"].astimezone(UTC)
            _group_add(_totals(traffic, (minute, g["agent_name"])), g)
            if covered_from is not None and minute >= covered_from:
                key = (minute, g["agent_name"], g["model"], g["api_key_id"] or 0)
                _group_add(_totals(spend, key), g)
    _traffic_replace(TrafficStep.MINUTE, ranges, _with_every_agent(traffic))
    _traffic_refold(_hours_of(ranges), at=at)
    hours = _runs(coarse, timedelta(hours=1))
    if hours:
        _traffic_replace(TrafficStep.HOUR, hours, _traffic_hours(hours))
        _days_refold(hours, at=at)
    # The daily spend: the minutes of covered days by difference, the other days whole.
    covered = [r for r in ranges if covered_from is not None and r[0] >= covered_from]
    _spend_by_difference(covered, spend)
    whole = sorted({m.date() for m in minutes if covered_from is None or m < covered_from})
    for day in whole:
        rollup_day_refresh(day=day)
    if whole:
        log.info(
            "late records reached %d day(s) before the minute rows: recomputed whole", len(whole)
        )
    return RollupRun(rows, len(fine), len(coarse), len(whole), rebuilt=False)


def _traffic_hours(hours: list[Range]) -> dict[TrafficKey, TrafficTotals]:
    rows: dict[TrafficKey, TrafficTotals] = {}
    for chunk in _chunks(hours):
        for g in _grouped(_in(chunk), trunc=TruncHour("created_at", tzinfo=UTC), by_key=False):
            _group_add(_totals(rows, (g["at"].astimezone(UTC), g["agent_name"])), g)
    return _with_every_agent(rows)


def _spend_by_difference(ranges: list[Range], new: dict[SpendKey, TrafficTotals]) -> None:
    """Replace the ``SpendMinute`` rows of ``ranges`` with ``new`` and add the difference to
    the days' ``SpendRollup`` rows."""
    if not ranges:
        return
    delta: dict[SpendKey, TrafficTotals] = {}
    for (minute, agent, model, key_id), totals in new.items():
        _totals(delta, (minute.date(), agent, model, key_id)).add(totals.rollup_values())
    for row in SpendMinute.objects.filter(_in(ranges, "start")).values(
        "start", "agent_name", "model", "api_key_id", *_SPEND_VALUES
    ):
        old: SpendKey = (
            row["start"].astimezone(UTC).date(),
            row["agent_name"],
            row["model"],
            row["api_key_id"],
        )
        _totals(delta, old).add(_as_row(row), sign=-1)
    _spend_minutes_replace(ranges, new)
    changed = {key: d for key, d in delta.items() if not d.is_zero()}
    if not changed:
        return
    days = sorted({key[0] for key in changed})
    current: dict[SpendKey, TrafficTotals] = {}
    for row in SpendRollup.objects.filter(
        day__in=days, agent_name__in={key[1] for key in changed}
    ).values("day", "agent_name", "model", "api_key_id", *_SPEND_VALUES):
        day_key: SpendKey = (row["day"], row["agent_name"], row["model"], row["api_key_id"])
        if day_key in changed:
            _totals(current, day_key).add(_as_row(row))
    for day_key, d in changed.items():
        _totals(current, day_key).add(d.rollup_values())
    broken = sorted({key[0] for key, totals in current.items() if totals.is_negative()})
    _spend_days_write(
        {key: t for key, t in current.items() if key[0] not in broken}, replace_days=()
    )
    for day in broken:  # never expected: the day and its minutes disagreed; heal the day
        log.error("the spend rollup of %s went below zero: recomputed whole", day)
        rollup_day_refresh(day=day)


def rollups_rebuild(*, now: datetime | None = None, days: int = 2) -> int:
    """Rebuild the rollups of the last ``days`` UTC days (today included) from the executions,
    under the watermark's lock, and set the mark: the first run of :func:`rollups_advance`,
    and what to run after changing rows by hand. Returns the ``SpendRollup`` rows kept."""
    if days < 1:
        raise ValidationFailed([f"days: {days} must be at least 1"])
    at = (now or timezone.now()).astimezone(UTC)
    RollupWatermark.objects.get_or_create(name=WATERMARK)
    with transaction.atomic():
        mark = _watermark_locked()
        assert mark is not None  # waited for it
        _rebuild(mark, at, days=days)
    return SpendRollup.objects.filter(day__gte=at.date() - timedelta(days=days - 1)).count()


def _rebuild(mark: RollupWatermark, at: datetime, *, days: int) -> RollupRun:
    taken = _mark_now()
    first_day = at.date() - timedelta(days=days - 1)
    start = _day_start(first_day)
    traffic: dict[TrafficKey, TrafficTotals] = {}
    spend: dict[SpendKey, TrafficTotals] = {}
    last = _floor(at, TrafficStep.MINUTE)
    for g in _grouped(
        Q(created_at__gte=start), trunc=TruncMinute("created_at", tzinfo=UTC), by_key=True
    ):
        minute = g["at"].astimezone(UTC)
        last = max(last, minute)
        _group_add(_totals(traffic, (minute, g["agent_name"])), g)
        _group_add(_totals(spend, (minute, g["agent_name"], g["model"], g["api_key_id"] or 0)), g)
    window = [(start, last + _MINUTE)]
    _spend_minutes_replace(window, spend)
    day_rows: dict[SpendKey, TrafficTotals] = {}
    for (minute, agent, model, key), totals in spend.items():
        _totals(day_rows, (minute.date(), agent, model, key)).add(totals.rollup_values())
    replace = [first_day + timedelta(days=i) for i in range((last.date() - first_day).days + 1)]
    _spend_days_write(day_rows, replace_days=replace)
    # Minute rows for the hours they are kept in; the hours before, from the executions.
    kept_from = max(
        start,
        _floor(at - TRAFFIC_KEEP[TrafficStep.MINUTE], TrafficStep.HOUR) + timedelta(hours=1),
    )
    minute_window = [(kept_from, last + _MINUTE)]
    _traffic_replace(
        TrafficStep.MINUTE,
        minute_window,
        _with_every_agent({k: t for k, t in traffic.items() if k[0] >= kept_from}),
    )
    _traffic_refold(_hours_of(minute_window))
    if start < kept_from:
        hours = [(start, kept_from)]
        _traffic_replace(TrafficStep.HOUR, hours, _traffic_hours(hours))
        _days_refold(hours)
    mark.mark = taken
    mark.spend_from = first_day
    mark.updated_at = timezone.now()
    mark.save(update_fields=["mark", "spend_from", "updated_at"])
    _prune(at, mark.spend_from)
    minutes = len({minute for minute, _agent in traffic})
    return RollupRun(0, minutes, 0, len(replace), rebuilt=True)


def rollups_refresh(*, now: datetime | None = None, days: int = 2) -> int:
    """Rebuild today's and yesterday's (UTC) rollups: :func:`rollups_rebuild`."""
    return rollups_rebuild(now=now, days=days)


__all__ = [
    "FINISHED_STATUSES",
    "SLI_VALID_STATUSES",
    "TRAFFIC_KEEP",
    "RollupRun",
    "rollup_day_refresh",
    "rollups_advance",
    "rollups_rebuild",
    "rollups_refresh",
    "traffic_rollups_prune",
    "traffic_rollups_refresh",
]
