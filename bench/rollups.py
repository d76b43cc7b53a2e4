"""The rollup refresh at scale: one minute of new traffic at 60 req/s (3,600 executions, stored
the way the recorder stores them: a ``started`` and a ``finished`` journal event each, through
``agents.executions.recording.store.store_rows`` in batches of 500 events), then one run of
the rollups job. Figures: docs/BENCHMARKS.md, "Issue 14: incremental rollups".

Usage (a migrated database with history, e.g. ``seed_history --executions 15000000 --days 30``)::

    DATABASE_URL=postgres://.../scale15m .venv/bin/python bench/rollups.py after [--rounds 7]
    # the refresh before issue 14 (the jobs rollups-refresh + traffic-rollups-refresh), on a
    # checkout of that commit: its code, this database
    BENCH_TREE=/tmp/main DATABASE_URL=... .venv/bin/python bench/rollups.py before [--rounds 3]
    DATABASE_URL=... .venv/bin/python bench/rollups.py clean

``after`` writes ``--rounds`` minutes of executions (agents of the database, marked in their
metadata as ``{"bench": "rollups"}``) ending with the current minute, timing the
``rollups_advance`` that follows each. ``clean`` (within 3 hours) deletes them and rebuilds
today's and yesterday's rollups.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(os.environ.get("BENCH_TREE") or Path(__file__).resolve().parent.parent)
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, reset_queries  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

RATE = 60  # req/s: the peak shape (500K/day is ~6 req/s on average)
BATCH = 500  # events per store_rows call: the drainer's batch


def _agents() -> list[str]:
    from agents.models import Agent

    names = list(Agent.objects.order_by("name").values_list("name", flat=True))
    if not names:
        raise SystemExit("no agents: seed the database first (seed_history)")
    return names


def _minute_of_traffic(start: float, agents: list[str], rng: random.Random) -> int:
    """3,600 executions created over the minute from ``start``, stored as the recorder does."""
    from decimal import Decimal

    from agents.executions.recording.events import encode_finished, encode_started, row_from_event
    from agents.executions.recording.store import store_rows
    from agents.runtime.types import (
        ExecutionRequest,
        ExecutionResult,
        ExecutionStatus,
        Message,
        Usage,
    )

    started: list[Any] = []
    finished: list[Any] = []
    for i in range(RATE * 60):
        created = start + i / RATE
        request = ExecutionRequest(
            agent=rng.choice(agents),
            messages=(Message("user", "where is my parcel?"),),
            execution_id=str(uuid.uuid4()),
            metadata={"bench": "rollups"},
        )
        r = rng.random()
        status = "failed" if r < 0.01 else "degraded" if r < 0.03 else "succeeded"
        latency = rng.lognormvariate(6.7, 0.5)
        result = ExecutionResult(
            execution_id=request.execution_id,
            agent=request.agent,
            status=ExecutionStatus(status),
            output="It is on its way.",
            model="gpt-4o-mini",
            deployment=None,
            attempts=2 if status != "succeeded" else 1,
            fallback_used=status == "degraded",
            fallback_reason="timeout" if status == "degraded" else None,
            cached=False,
            usage=Usage(120, 40),
            cost_usd=Decimal("0.00004200"),
            latency_ms=latency,
            created_at=created,
            finished_at=created + latency / 1000,
            metadata=request.metadata,
            input=request.messages,
        )
        started.append(row_from_event(encode_started(request, created, owner="bench")))
        finished.append(row_from_event(encode_finished(result)))
    events = started + finished  # every start reaches the journal before its finish
    for i in range(0, len(events), BATCH):
        outcome = store_rows(list(enumerate(events[i : i + BATCH])))
        assert not outcome.rejected, outcome.rejected
    return len(started)


SLOWEST: list[str] = []  # the slowest queries of the last timed call


def _timed(fn: Any) -> tuple[float, int, Any]:
    reset_queries()
    with CaptureQueriesContext(connection) as queries:
        t0 = time.perf_counter()
        out = fn()
        ms = (time.perf_counter() - t0) * 1000
    ranked = sorted(queries.captured_queries, key=lambda q: -float(q["time"]))[:3]
    SLOWEST[:] = [f"{float(q['time']) * 1000:.0f} ms {q['sql'][:90]}" for q in ranked]
    return ms, len(queries), out


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def after(rounds: int) -> None:
    from budgets.rollups import rollups_advance

    rng = random.Random(14)
    agents = _agents()
    ms, _, run = _timed(rollups_advance)
    print(f"first run: {ms:.0f} ms (rebuilt: {run.rebuilt}); load {_load()}")
    now = time.time()
    first = (int(now) // 60 - rounds + 1) * 60
    timings = []
    for r in range(rounds):
        t0 = time.perf_counter()
        rows = _minute_of_traffic(first + 60 * r, agents, rng)
        insert_s = time.perf_counter() - t0
        ms, queries, run = _timed(rollups_advance)
        timings.append(ms)
        print(
            f"round {r + 1}: {rows} executions stored in {insert_s:.1f} s; rollups_advance "
            f"{ms:.0f} ms, {queries} queries, {run.rows} row versions, {run.minutes} minutes; "
            f"load {_load()}"
        )
        for line in SLOWEST:
            print(f"    {line}")
    print(
        f"rollups_advance after 3,600 new executions: median {statistics.median(timings):.0f} ms "
        f"(min {min(timings):.0f}, max {max(timings):.0f}, {rounds} rounds)"
    )
    ms, queries, run = _timed(rollups_advance)
    print(f"a run with nothing new: {ms:.0f} ms, {queries} queries")


def before(rounds: int) -> None:
    # That tree's API (issue 14 moved these to budgets.rollups).
    from budgets.services import (  # type: ignore[attr-defined]
        rollups_refresh,
        traffic_rollups_refresh,
    )

    daily, traffic = [], []
    for r in range(rounds):
        ms_d, q_d, _ = _timed(rollups_refresh)
        ms_t, q_t, _ = _timed(traffic_rollups_refresh)
        daily.append(ms_d)
        traffic.append(ms_t)
        print(
            f"round {r + 1}: rollups_refresh {ms_d:.0f} ms ({q_d} queries), "
            f"traffic_rollups_refresh {ms_t:.0f} ms ({q_t} queries); load {_load()}"
        )
    print(
        f"before: rollups_refresh median {statistics.median(daily):.0f} ms, "
        f"traffic_rollups_refresh median {statistics.median(traffic):.0f} ms ({rounds} rounds)"
    )


def insert(rounds: int) -> None:
    """Only the stores of a minute of traffic (the recorder's cost, trigger included)."""
    rng = random.Random(15)
    agents = _agents()
    first = (int(time.time()) // 60 - rounds + 1) * 60
    timings = []
    for r in range(rounds):
        t0 = time.perf_counter()
        _minute_of_traffic(first + 60 * r, agents, rng)
        timings.append(time.perf_counter() - t0)
    print(
        f"3,600 executions (7,200 events) stored: median {statistics.median(timings):.2f} s "
        f"({rounds} rounds); load {_load()}"
    )


def clean() -> None:
    from datetime import timedelta

    from django.utils import timezone

    from agents.models import Execution
    from budgets.rollups import rollups_rebuild

    recent = Execution.objects.filter(created_at__gte=timezone.now() - timedelta(hours=3))
    deleted, _ = recent.filter(metadata__bench="rollups").delete()
    ms, _, _ = _timed(rollups_rebuild)
    print(f"deleted {deleted} bench executions; rollups_rebuild {ms:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("after", "before", "insert", "clean"))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"database {connection.settings_dict['NAME']}, tree {ROOT}")
    if args.mode == "after":
        after(args.rounds)
    elif args.mode == "before":
        before(args.rounds)
    elif args.mode == "insert":
        insert(args.rounds)
    else:
        clean()


if __name__ == "__main__":
    main()
