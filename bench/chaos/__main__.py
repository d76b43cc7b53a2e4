"""``make chaos``: every fault scenario against real processes, then the table of figures.

Usage::

    .venv/bin/python -m bench.chaos                    # all of them (about 10 minutes)
    .venv/bin/python -m bench.chaos --only poisoned,redis-stall
    .venv/bin/python -m bench.chaos --quick            # the CI sizes (tests/chaos/)
    .venv/bin/python -m bench.chaos --env BREAKWATER_SOME_KNOB=1   # passed to every process
    .venv/bin/python -m bench.chaos --keep DIR         # keep the processes' logs in DIR

PostgreSQL: scratch databases are created next to ``CHAOS_DATABASE_URL`` or ``DATABASE_URL``
(when it is PostgreSQL) and dropped afterwards; without one, SQLite (and ``pg-refusing`` cannot
run). Redis: private ``redis-server`` processes on ports 6391-6399, never a shared server.

Exit status 0 when every target is met, 1 when one is missed, 2 when a scenario could not run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.chaos import scenarios, stack  # noqa: E402
from bench.chaos.report import Result, table  # noqa: E402

APP_DIRS = ("agents", "budgets", "console", "incidents")
ALARM_S = 40 * 60  # the whole run, whatever hangs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    names = [s.name for s in scenarios.FULL]
    parser.add_argument("--only", help=f"comma-separated, of: {', '.join(names)}")
    parser.add_argument("--quick", action="store_true", help="the CI sizes (tests/chaos/)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for every Breakwater process (repeatable)",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the logs here")
    args = parser.parse_args(argv)
    chosen = names if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(names)}")
    if args.quick:
        chosen = [n for n in chosen if n in scenarios.QUICK]
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            parser.error(f"--env: expected NAME=VALUE, got {item!r}")
        os.environ[name] = value  # app_env() passes the harness's environment on
    if shutil.which("redis-server") is None:
        print("note: redis-server is not installed: the distributed scenarios cannot run")
    stack.guard_run(ALARM_S)

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="bw-chaos-"))
    results: list[Result] = []
    try:
        for name in chosen:
            run = scenarios.QUICK[name] if args.quick else _full(name)
            print(f"=== {name}", flush=True)
            result = run(base / name)
            results.append(result)
            print(result.summary(), flush=True)
            if result.error and args.keep is None:
                print(stack.logs(base / name), flush=True)
    finally:
        signal.alarm(0)
        stack.stop_all()
        stack.drop_templates()
        if args.keep is not None:
            stack.keep(base, args.keep)
        shutil.rmtree(base, ignore_errors=True)
    wall = time.monotonic() - started
    print()
    print(table(results))
    print()
    print(
        f"Measured on {common.provenance(APP_DIRS)}; {os.cpu_count()} cores; 1-min load "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after; wall time {wall:.0f} s; "
        f"database: {'PostgreSQL' if stack.postgres_base() else 'SQLite'}."
    )
    if any(r.error for r in results):
        return 2
    return 0 if all(r.ok for r in results) else 1


def _full(name: str) -> Callable[[Path], Result]:
    return next(s.run for s in scenarios.FULL if s.name == name)


if __name__ == "__main__":
    sys.exit(main())
