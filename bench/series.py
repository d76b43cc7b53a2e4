"""The console's series and totals (``budgets.series``) and the stats table at 30 days of
500K executions a day over 10 agents (15M executions), from the rollups only; and the cost of
one ``traffic_rollups_refresh`` at that traffic. Figures: docs/BENCHMARKS.md, "Issue 12:
console series".

Usage::

    DATABASE_URL=postgres://... .venv/bin/python bench/series.py [--rounds 30] [--per-day 500000]

Writes into the configured (migrated) database: ``TrafficRollup`` rows as the refresh keeps
them (minute rows for 48 h, hour rows for 35 days, day rows for 30 days), ``SpendRollup`` day
rows (3 models x 2 keys per agent and day) and, for the refresh, the executions of the last
20 minutes at that rate; all for agents named ``bench-series-N`` (and the every-agent rows),
deleted before and after. It refuses a database with traffic rollups of other agents.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, reset_queries  # noqa: E402

from agents.models import Execution  # noqa: E402
from budgets.models import (  # noqa: E402
    ALL_AGENTS,
    LATENCY_BUCKETS_MS,
    SpendRollup,
    TrafficRollup,
)
from budgets.rollups import traffic_rollups_refresh  # noqa: E402
from budgets.selectors import agent_stats_by_window, latency_percentile  # noqa: E402
from budgets.series import (  # noqa: E402
    TRAFFIC_FIELDS,
    WINDOWS,
    TrafficTotals,
    overview_totals,
    traffic_series,
    traffic_series_by_agent,
)

AGENTS = tuple(f"bench-series-{i}" for i in range(10))
SIZE = len(LATENCY_BUCKETS_MS) + 1
REASONS = ("timeout", "rate_limited", "llm_error", "circuit_open")


def _clean() -> None:
    TrafficRollup.objects.filter(agent_name__in=(*AGENTS, ALL_AGENTS)).delete()
    SpendRollup.objects.filter(agent_name__in=AGENTS).delete()
    Execution.objects.filter(agent_name__in=AGENTS).delete()


def _values(rng: random.Random, requests: int) -> dict[str, Any]:
    """Plausible totals of ``requests`` executions (95% succeeded, 3% degraded, 2% failed)."""
    degraded, failed = requests * 3 // 100, requests * 2 // 100
    buckets = [0] * SIZE
    for _ in range(min(requests, 60)):  # the shape of a histogram, scaled to the count
        buckets[min(SIZE - 1, int(rng.lognormvariate(2.3, 0.6)))] += 1
    scale = requests / max(1, sum(buckets))
    buckets = [round(count * scale) for count in buckets]
    fallbacks = degraded + requests // 50
    return {
        "requests": requests,
        "succeeded": requests - degraded - failed,
        "degraded": degraded,
        "failed": failed,
        "cached": requests // 10,
        "fallbacks": fallbacks,
        "fallback_reasons": {r: fallbacks // len(REASONS) for r in REASONS},
        "input_tokens": requests * 400,
        "output_tokens": requests * 150,
        "cost_usd": Decimal(requests) * Decimal("0.00042"),
        "saved_usd": Decimal(requests // 10) * Decimal("0.0004"),
        "latency_sum_ms": requests * 700,
        "latency_count": requests - failed,
        "latency_buckets": buckets,
        "model_choices": {"standard": requests - requests // 5, "cheap:simple": requests // 5},
    }


def _fill(now: datetime, per_day: int) -> int:
    rng = random.Random(12)
    per_agent_minute = per_day / len(AGENTS) / 1440
    rows: list[Any] = []

    def add(step: int, start: datetime, agent: str) -> None:
        count = max(1, round(per_agent_minute * step / 60 * rng.uniform(0.7, 1.3)))
        extra = {"retries": count // 20}
        rows.append(
            TrafficRollup(
                step_s=step, start=start, agent_name=agent, **_values(rng, count), **extra
            )
        )

    minute = datetime.fromtimestamp(int(now.timestamp()) // 60 * 60, UTC)
    hour = minute.replace(minute=0)
    day = hour.replace(hour=0)
    for agent in AGENTS:
        for i in range(48 * 60):
            add(60, minute - timedelta(minutes=i), agent)
        for i in range(35 * 24):
            add(3600, hour - timedelta(hours=i), agent)
        for i in range(31):
            add(86400, day - timedelta(days=i), agent)
    every: dict[tuple[int, datetime], TrafficTotals] = {}
    for row in rows:  # the every-agent rows, as the refresh writes them
        values = {name: getattr(row, name) for name in TRAFFIC_FIELDS}
        every.setdefault((row.step_s, row.start), TrafficTotals()).add(values)
    for (step, start), totals in every.items():
        values = totals.rollup_values()
        rows.append(TrafficRollup(step_s=step, start=start, agent_name=ALL_AGENTS, **values))
    for row in rows[: -len(every)]:
        row.p50_ms = latency_percentile(row.latency_buckets, 0.5)
        row.p95_ms = latency_percentile(row.latency_buckets, 0.95)
    TrafficRollup.objects.bulk_create(rows, batch_size=2000)
    spend = []
    for agent in AGENTS:
        for i in range(31):
            for model in ("gpt-4o", "gpt-4o-mini", "claude"):
                for key in (0, 1):
                    spend.append(
                        SpendRollup(
                            day=(day - timedelta(days=i)).date(),
                            agent_name=agent,
                            model=model,
                            api_key_id=key,
                            **_values(rng, per_day // len(AGENTS) // 6),
                        )
                    )
    SpendRollup.objects.bulk_create(spend, batch_size=2000)
    return len(rows) + len(spend)


def _executions(now: datetime, per_day: int, minutes: int = 20) -> int:
    rng = random.Random(7)
    count = per_day * minutes // 1440
    rows = []
    for i in range(count):
        at = now - timedelta(seconds=rng.uniform(0, minutes * 60))
        status = rng.choices(("succeeded", "degraded", "failed"), (95, 3, 2))[0]
        fallback = status == "degraded" or rng.random() < 0.02
        rows.append(
            Execution(
                agent_name=AGENTS[i % len(AGENTS)],
                status=status,
                model="gpt-4o",
                attempts=rng.choice((1, 1, 1, 2)),
                fallback_used=fallback,
                fallback_reason=rng.choice(REASONS) if fallback else None,
                cached=rng.random() < 0.1,
                input_tokens=400,
                output_tokens=150,
                cost_usd=Decimal("0.00042"),
                latency_ms=int(rng.lognormvariate(6.3, 0.6)) if status != "failed" else None,
                created_at=at,
                finished_at=at,
            )
        )
    Execution.objects.bulk_create(rows, batch_size=2000)
    return count


def _time(fn: Callable[[], object], rounds: int) -> tuple[float, int]:
    """Median ms of ``rounds`` calls (after one warm-up) and the queries of one call."""
    fn()
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    from django.conf import settings

    debug = settings.DEBUG
    settings.DEBUG = True
    reset_queries()
    fn()
    queries = len(connection.queries)
    settings.DEBUG = debug
    return statistics.median(samples), queries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=500_000)
    args = parser.parse_args()
    now = datetime.now(UTC)
    if TrafficRollup.objects.exclude(agent_name__in=(*AGENTS, ALL_AGENTS)).exists():
        sys.exit("bench/series.py: this database has traffic rollups of its own; use an empty one")
    _clean()
    try:
        start = time.perf_counter()
        written = _fill(now, args.per_day)
        print(f"{connection.vendor}: {written} rollup rows in {time.perf_counter() - start:.1f} s")
        one = frozenset({AGENTS[3]})
        two = frozenset(AGENTS[:2])
        cases: list[tuple[str, Callable[[], object]]] = []
        for window in WINDOWS:
            cases += [
                (f"traffic_series {window} all", partial(traffic_series, window=window, now=now)),
                (
                    f"traffic_series {window} one agent",
                    partial(traffic_series, window=window, agents=one, now=now),
                ),
                (
                    f"traffic_series {window} two agents",
                    partial(traffic_series, window=window, agents=two, now=now),
                ),
                (
                    f"traffic_series_by_agent {window}",
                    partial(traffic_series_by_agent, window=window, now=now),
                ),
                (f"overview_totals {window}", partial(overview_totals, window=window, now=now)),
                (
                    f"agent_stats_by_window {window}",
                    partial(agent_stats_by_window, window=window, now=now),
                ),
            ]
        print(f"{'call':<38} {'median ms':>10} {'queries':>8}")
        for name, fn in cases:
            ms, queries = _time(fn, args.rounds)
            print(f"{name:<38} {ms:>10.2f} {queries:>8}")
        count = _executions(now, args.per_day)
        ms, queries = _time(lambda: traffic_rollups_refresh(now=now), max(5, args.rounds // 3))
        print(
            f"{'traffic_rollups_refresh':<38} {ms:>10.2f} {queries:>8}"
            f"   ({count} executions in the last 20 min, {args.per_day}/day)"
        )
    finally:
        _clean()


if __name__ == "__main__":
    main()
