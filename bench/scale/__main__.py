"""``make scale-test``: the production-shaped test (bench/scale), then its figures.

Usage::

    .venv/bin/python -m bench.scale                 # 60 req/s for 180 s (about 8 minutes)
    .venv/bin/python -m bench.scale --quick         # the CI shape (tests/scale/)
    .venv/bin/python -m bench.scale --rate 30 --duration 90
    .venv/bin/python -m bench.scale --keep DIR      # keep the processes' logs and the record

Needs PostgreSQL (``DATABASE_URL`` or ``CHAOS_DATABASE_URL``: a scratch database is created next
to it and dropped) and ``redis-server`` (a private one on a port of 6391-6399). Exit status 0 when
every target is met (lost 0, duplicated 0, ledger = counters, outage successes >= 99.9%), 1
when one is missed, 2 when the run could not be made.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.chaos import stack  # noqa: E402
from bench.scale import scenario  # noqa: E402

APP_DIRS = ("agents", "budgets", "console", "incidents", "core")
ALARM_S = 30 * 60


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI shape (tests/scale/)")
    parser.add_argument("--rate", type=float, help="requests/s (default: the shape's)")
    parser.add_argument("--duration", type=float, help="seconds of load (faults keep their times)")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the logs here")
    args = parser.parse_args(argv)
    shape = scenario.QUICK if args.quick else scenario.FULL
    if args.rate is not None:
        if not 0 < args.rate <= 500:
            parser.error("--rate: must be > 0 and <= 500")
        shape = dataclasses.replace(shape, rate=args.rate)
    if args.duration is not None:
        if args.duration <= shape.kill_worker_s + shape.worker_down_s:
            parser.error(f"--duration: must be > {shape.kill_worker_s + shape.worker_down_s:g}")
        shape = dataclasses.replace(shape, duration_s=args.duration)
    if shutil.which("redis-server") is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    stack.guard_run(ALARM_S)
    before = scenario.machine()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bw-scale-"))
    try:
        result = scenario.run(tmp, shape)
        if result.error and args.keep is None:
            print(stack.logs(tmp, 1500), flush=True)
    finally:
        signal.alarm(0)
        stack.stop_all()
        stack.drop_templates()
        if args.keep is not None:
            stack.keep(tmp, args.keep, ("*.log", "*.jsonl"))
        shutil.rmtree(tmp, ignore_errors=True)
    print(result.summary())
    print()
    print(
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
        f"{common.provenance(APP_DIRS)}; before: {before}; after: {scenario.machine()}; "
        f"wall time {time.monotonic() - started:.0f} s; shape {shape}."
    )
    if result.error:
        return 2
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
