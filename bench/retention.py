"""Retention at scale: the retention job's batched delete against concurrent recorder writes, and
day partitions as the alternative. Figures: docs/BENCHMARKS.md, "Issue 14: retention";
decision: docs/DECISIONS.md #24.

Usage::

    # The delete at 15M: writers at R rows/s each for --baseline-s, then the same writers while
    # executions_prune(days=D) deletes what is older than D days, until done.
    DATABASE_URL=postgres://.../scale15m .venv/bin/python bench/retention.py delete \\
        --keep-days 29 --writers 2 --rate 60 --baseline-s 60

    # Batched DELETE vs DROP of a day partition, and the cost of converting the table, on a
    # scratch database (created and migrated here; its executions table is refilled).
    .venv/bin/python bench/retention.py partition \\
        --database-url postgres://root@127.0.0.1:5432/h_retention_bench --days 4 --per-day 500000

Writers do what the drainer does (``agents.executions.recording.store.store_rows``): every
0.2 s one transaction with the ``started`` rows of the executions begun since the last drain
and the ``finished`` rows of those begun a second earlier (upserts on ``id``), each event
decoded from the journal's wire format. Their executions have no cost (no ledger entry: the
ledger is append-only, and the shared database keeps what is written to it); they belong to the
agent ``bench-retention`` and are deleted at the end. One line per drain: the wall time and the
latency of ``store_rows``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

AGENT = "bench-retention"
DRAIN_S = 0.2  # the recorder's drain interval
FINISH_AFTER_DRAINS = 5  # an execution's finished event arrives about a second after started


def _setup() -> None:
    import django

    django.setup()


# --- writers ---------------------------------------------------------------------------------


def _event(kind: str, execution_id: str, created: float, now: float) -> bytes:
    import orjson

    event: dict[str, Any] = {
        "event": kind,
        "id": execution_id,
        "agent": AGENT,
        "api_key_id": None,
        "input": [{"role": "user", "content": "Where is my order #48213? It was due Tuesday."}],
        "session_id": "",
        "metadata": {"bench": "retention"},
        "created_at": created,
    }
    if kind == "started":
        event |= {"owner": "bench", "reserved_micros": 0}
    else:
        event |= {
            "status": "succeeded",
            "output": "Your order #48213 left the warehouse yesterday; it arrives on Friday. " * 3,
            "model": "gpt-4o-mini",
            "deployment_id": 1,
            "attempts": 1,
            "fallback_used": False,
            "fallback_reason": None,
            "cached": False,
            "input_tokens": 412,
            "output_tokens": 96,
            "cost_usd": "0",
            "model_choice": "standard",
            "saved_usd": "0",
            "latency_ms": (now - created) * 1000,
            "steps": [
                {
                    "kind": "llm",
                    "model": "gpt-4o-mini",
                    "deployment": 1,
                    "outcome": "ok",
                    "latency_ms": round((now - created) * 1000),
                    "input_tokens": 412,
                    "output_tokens": 96,
                }
            ],
            "error": None,
            "finished_at": now,
        }
    return orjson.dumps(event)


def writer(rate: float, out: Path, stop: Path) -> None:
    """Write at ``rate`` executions/s until ``stop`` exists; one line per drain to ``out``."""
    _setup()
    from django.db import connection

    from agents.executions.recording.events import row_from_event
    from agents.executions.recording.store import store_rows

    per_drain = rate * DRAIN_S
    owed = 0.0
    pending: list[list[tuple[str, float]]] = []
    next_at = time.monotonic()
    with out.open("w") as log:
        while not stop.exists():
            now = time.time()
            owed += per_drain
            begun = [(str(uuid.uuid4()), now) for _ in range(int(owed))]
            owed -= len(begun)
            pending.append(begun)
            done = pending.pop(0) if len(pending) > FINISH_AFTER_DRAINS else []
            raw = [_event("started", i, c, now) for i, c in begun]
            raw += [_event("finished", i, c, now) for i, c in done]
            rows = [(n, row_from_event(r)) for n, r in enumerate(raw)]
            t0 = time.perf_counter()
            outcome = store_rows(rows)
            ms = (time.perf_counter() - t0) * 1000
            assert not outcome.rejected, outcome.rejected
            log.write(f"{time.time():.3f} {ms:.2f} {len(rows)}\n")
            log.flush()
            next_at += DRAIN_S
            time.sleep(max(0.0, next_at - time.monotonic()))
    connection.close()


def _start_writers(n: int, rate: float, work: Path) -> tuple[list[subprocess.Popen[bytes]], Path]:
    stop = work / "stop"
    stop.unlink(missing_ok=True)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "writer",
                "--rate",
                str(rate),
                "--out",
                str(work / f"w{i}"),
                "--stop",
                str(stop),
            ],
            env=os.environ.copy(),
        )
        for i in range(n)
    ]
    return procs, stop


def _wait_for_first_drains(work: Path, n: int, timeout_s: float = 120.0) -> None:
    """Until every writer has drained a few times (Django's set-up takes seconds under load)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        files = [work / f"w{i}" for i in range(n)]
        if all(f.exists() and len(f.read_text().splitlines()) >= 10 for f in files):
            return
        time.sleep(0.5)
    raise SystemExit("writers did not start")


def _stop_writers(procs: list[subprocess.Popen[bytes]], stop: Path) -> None:
    stop.touch()
    for p in procs:
        p.wait(timeout=60)


def _latencies(work: Path, n: int, start: float, end: float) -> list[float]:
    found = []
    for i in range(n):
        for line in (work / f"w{i}").read_text().splitlines():
            at, ms, _rows = line.split()
            if start <= float(at) < end:
                found.append(float(ms))
    return found


def _summary(ms: list[float]) -> dict[str, float]:
    if len(ms) < 2:
        return {"drains": len(ms)}
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {
        "drains": len(ms),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
        "max_ms": round(max(ms), 1),
    }


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _no_sleep(_: float) -> None:
    return None


def _cleanup_writers_rows() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM agents_execution WHERE agent_name = %s", [AGENT])
        return int(cursor.rowcount)


# --- the delete at scale ------------------------------------------------------------------------


def delete(args: argparse.Namespace) -> None:
    _setup()
    from django.db import connection
    from django.utils import timezone

    from agents.executions.retention import executions_prune, retention_cutoff

    now = timezone.now()
    cutoff = retention_cutoff(now=now, days=args.keep_days)
    with connection.cursor() as cursor:
        # The planner's estimate: counting 15M rows is a scan of the whole table.
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE relname = 'agents_execution'")
        total = cursor.fetchone()[0]
        cursor.execute("SELECT min(created_at) FROM agents_execution")
        oldest = cursor.fetchone()[0]
    print(
        f"executions: about {total:,}, the oldest {oldest:%Y-%m-%d %H:%M}; deleting those "
        f"created before {cutoff:%Y-%m-%d %H:%M} UTC"
    )
    connection.close()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    procs, stop = _start_writers(args.writers, args.rate, work)
    try:
        _wait_for_first_drains(work, args.writers)
        t_base = time.time()
        load_before = _loadavg()
        time.sleep(args.baseline_s)
        t_delete = time.time()
        run = executions_prune(now=now, days=args.keep_days, budget_s=None)
        t_end = time.time()
        load_during = _loadavg()
        time.sleep(2)
    finally:
        _stop_writers(procs, stop)
    base = _summary(_latencies(work, args.writers, t_base, t_delete))
    during = _summary(_latencies(work, args.writers, t_delete, t_end))
    figures = {
        "executions_before_estimate": total,
        "oldest_before": oldest.isoformat() if oldest else None,
        "cutoff": cutoff.isoformat(),
        "deleted": run.deleted,
        "batches": run.batches,
        "delete_wall_s": round(run.elapsed_s, 1),
        "deleted_per_s": round(run.deleted / run.elapsed_s) if run.elapsed_s else None,
        "writers": args.writers,
        "rate_per_writer": args.rate,
        "writers_without_delete": base,
        "writers_during_delete": during,
        "loadavg_before": load_before,
        "loadavg_after_delete": load_during,
        "oldest_kept": run.oldest_kept.isoformat() if run.oldest_kept else None,
    }
    removed = _cleanup_writers_rows()
    figures["writer_rows_removed"] = removed
    print(json.dumps(figures, indent=2))


# --- batched DELETE vs day partitions ------------------------------------------------------------

_FILL = """
INSERT INTO {table} (id, agent_name, status, input, output, model, deployment_id, attempts,
    fallback_used, cached, input_tokens, output_tokens, cost_usd, model_choice, saved_usd,
    latency_ms, session_id, metadata, steps, created_at, finished_at, owner, reserved_usd)
SELECT md5(g::text || %(seed)s)::uuid, 'agent-' || (g %% 10), 'succeeded',
    '[{{"role": "user", "content": "Where is my order #48213? It was due Tuesday."}}]'::jsonb,
    repeat('Your order left the warehouse yesterday; it arrives on Friday. ', 3), 'gpt-4o-mini',
    1, 1, false, false, 412, 96, 0.000123, 'standard', 0, 800 + g %% 400, '',
    '{{}}'::jsonb,
    '[{{"kind": "llm", "model": "gpt-4o-mini", "deployment": 1, "outcome": "ok",
        "latency_ms": 812, "input_tokens": 412, "output_tokens": 96}}]'::jsonb,
    %(start)s + (g * %(step)s) * interval '1 second',
    %(start)s + (g * %(step)s) * interval '1 second' + interval '800 milliseconds', '', 0
FROM generate_series(0, %(n)s - 1) AS g
"""


def _timed(cursor: Any, sql: str, params: Any = None) -> float:
    t0 = time.perf_counter()
    cursor.execute(sql, params)
    return time.perf_counter() - t0


def partition(args: argparse.Namespace) -> None:
    os.environ["DATABASE_URL"] = args.database_url
    name = args.database_url.rsplit("/", 1)[1]
    admin = args.database_url.rsplit("/", 1)[0] + "/postgres"
    subprocess.run(["psql", admin, "-qc", f'DROP DATABASE IF EXISTS "{name}"'], check=True)
    subprocess.run(["psql", admin, "-qc", f'CREATE DATABASE "{name}"'], check=True)
    _setup()
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from agents.executions.retention import executions_delete_before

    call_command("migrate", verbosity=0)
    now = timezone.now().replace(microsecond=0)
    first_day = (now - timedelta(days=args.days + 30)).replace(hour=0, minute=0, second=0)
    per_day, step = args.per_day, 86_400 / args.per_day
    out: dict[str, Any] = {"days": args.days, "per_day": per_day}
    with connection.cursor() as cursor:
        fill = 0.0
        for day in range(args.days):
            fill += _timed(
                cursor,
                _FILL.format(table="agents_execution"),
                {
                    "seed": f"d{day}",
                    "start": first_day + timedelta(days=day),
                    "step": step,
                    "n": per_day,
                },
            )
        cursor.execute("VACUUM ANALYZE agents_execution")
        out["plain_fill_rows_per_s"] = round(args.days * per_day / fill)
        cursor.execute("SELECT pg_total_relation_size('agents_execution')")
        out["plain_bytes_per_row"] = round(cursor.fetchone()[0] / (args.days * per_day))

        # The partitioned twin: what converting Execution would take. Its primary key must hold
        # the partition key (PostgreSQL: a unique constraint on a partitioned table includes
        # every partition column), so ON CONFLICT (id) (the recorder's upsert) no longer works.
        cursor.execute(
            "CREATE TABLE parted (LIKE agents_execution INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            " PARTITION BY RANGE (created_at)"
        )
        cursor.execute("ALTER TABLE parted ADD PRIMARY KEY (id, created_at)")
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'agents_execution' "
            "AND indexname NOT LIKE '%%pkey'"
        )
        for (indexdef,) in cursor.fetchall():
            index = indexdef.replace("ON public.agents_execution", "ON parted").replace(
                "CREATE INDEX ", "CREATE INDEX p_"
            )
            cursor.execute(index)
        for day in range(args.days + 1):
            lo = first_day + timedelta(days=day)
            cursor.execute(
                f"CREATE TABLE parted_{day} PARTITION OF parted FOR VALUES FROM (%s) TO (%s)",
                [lo, lo + timedelta(days=1)],
            )
        copy_s = _timed(cursor, "INSERT INTO parted SELECT * FROM agents_execution")
        cursor.execute("VACUUM ANALYZE parted")
        out["convert_copy_rows_per_s"] = round(args.days * per_day / copy_s)
        out["convert_15m_estimate_s"] = round(15_000_000 / out["convert_copy_rows_per_s"])

        # One day out: DETACH + DROP of the oldest partition ...
        detach_s = _timed(cursor, "ALTER TABLE parted DETACH PARTITION parted_0")
        drop_s = _timed(cursor, "DROP TABLE parted_0")
        out["partition_detach_s"] = round(detach_s, 3)
        out["partition_drop_s"] = round(drop_s, 3)
    # ... against the retention job's batches for the next day (its pauses included), then
    # for the day after without pauses (the work alone).
    t0 = time.perf_counter()
    run = executions_delete_before(cutoff=first_day + timedelta(days=2), budget_s=None)
    wall = time.perf_counter() - t0
    out["batched_delete"] = {
        "deleted": run.deleted,
        "batches": run.batches,
        "wall_s": round(wall, 1),
        "rows_per_s": round(run.deleted / wall),
    }
    t0 = time.perf_counter()
    run = executions_delete_before(
        cutoff=first_day + timedelta(days=3), budget_s=None, pause_min_s=0.0, sleep=_no_sleep
    )
    wall = time.perf_counter() - t0
    out["batched_delete_no_pause"] = {
        "deleted": run.deleted,
        "batches": run.batches,
        "wall_s": round(wall, 1),
        "rows_per_s": round(run.deleted / wall),
    }
    out["loadavg"] = _loadavg()
    print(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer")
    w.add_argument("--rate", type=float, required=True)
    w.add_argument("--out", type=Path, required=True)
    w.add_argument("--stop", type=Path, required=True)
    d = sub.add_parser("delete")
    d.add_argument("--keep-days", type=int, default=29)
    d.add_argument("--writers", type=int, default=2)
    d.add_argument("--rate", type=float, default=60.0, help="executions/s per writer")
    d.add_argument("--baseline-s", type=float, default=60.0)
    d.add_argument("--work", default=str(ROOT / "var" / "bench-retention"))
    p = sub.add_parser("partition")
    p.add_argument("--database-url", required=True)
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--per-day", type=int, default=500_000)
    args = parser.parse_args()
    if args.command == "writer":
        writer(args.rate, args.out, args.stop)
    elif args.command == "delete":
        delete(args)
    else:
        partition(args)


if __name__ == "__main__":
    main()
