"""The console scale benchmark: server time of each console page (and the stats API) at a given
history size, in-process through Django's test client (no network, no server: what is timed is
the view, its middleware and its queries).

Runs against the database of the environment (``DATABASE_URL``; settings ``console.settings``),
logged in as a superuser (``bench-console``, created if absent). Each path is fetched ``--warmup``
times untimed, then ``--n`` times; the table gives p50 / p95 / max in ms and the answer's
status. A path that answers 404 (a page not built yet, nothing to show) is
listed with a note and not timed.

``--seed N`` first replaces the history with ``N`` executions over ``--days`` days through
``seed_history`` (its executions, ledger, incidents and rollups are emptied first: only with
``--wipe``, and never on a database holding other executions without it). Usage::

    DATABASE_URL=postgres://... .venv/bin/python bench/console.py [--seed 10000|1000000 --wipe]
        [--days 30] [--n 30] [--warmup 3] [--path / --path /agents/ ...] [--out FILE]

The issue-12 target: p95 <= 200 ms on every page, and the p50 at 1M no more than 1.5x the p50 at
10K (``make bench-console`` runs both sizes; results go to docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The contract's console pages (docs/INTERFACES.md), then the API reads they sit on. {agent},
# {execution} and {incident} are filled from the database (a path whose object is missing is
# skipped with a note).
DEFAULT_PATHS = (
    "/",
    "/agents/",
    "/agents/?window=7d",
    "/agents/?window=30d",
    "/agents/{agent}/",
    "/executions/",
    "/executions/?agent={agent}",
    "/executions/{execution}/",
    "/budgets/",
    "/incidents/",
    "/incidents/{incident}/",
    "/slos/",
    "/notifications/",
    "/drills/",
    "/keys/",
    "/audit/",
    "/api/v1/stats/agents?window=24h",
    "/api/v1/stats/agents?window=30d",
    "/api/v1/executions",
    "/api/v1/incidents",
    "/api/v1/budgets",
    "/api/v1/slos",
)
USER = "bench-console"


@dataclass
class Timing:
    path: str
    status: int
    samples_ms: list[float]
    note: str = ""

    def pct(self, q: float) -> float:
        ordered = sorted(self.samples_ms)
        if not ordered:
            return float("nan")
        index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
        return ordered[index]


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    import django

    django.setup()


def _history_tables() -> list[Any]:
    """The models seed_history fills: executions, the ledger, incidents, and every rollup."""
    from django.apps import apps

    from agents.models import Execution
    from budgets.models import SpendEntry
    from incidents.models import Incident, IncidentEvent

    rollups = [
        m for m in apps.get_app_config("budgets").get_models() if m.__name__.endswith("Rollup")
    ]
    return [Execution, SpendEntry, IncidentEvent, Incident, *rollups]


def wipe_history() -> None:
    from django.db import connection, transaction

    tables = [m._meta.db_table for m in _history_tables()]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables))
        else:  # SQLite's append-only triggers refuse UPDATE only
            for table in tables:
                cursor.execute(f'DELETE FROM "{table}"')  # noqa: S608 - model tables


def seed(executions: int, days: int, *, wipe: bool, seed_value: int) -> str:
    from django.core.management import call_command

    from agents.models import Execution

    if Execution.objects.exists():
        if not wipe:
            raise SystemExit(
                "bench/console.py: the database already holds executions; add --wipe to "
                "replace them (executions, ledger, incidents and rollups are emptied)"
            )
        wipe_history()
    started = time.perf_counter()
    call_command("seed_history", executions=executions, days=days, seed=seed_value, verbosity=1)
    return f"seeded {executions:,} executions over {days} days in {time.perf_counter() - started:.1f} s"


def _client() -> tuple[Any, str]:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from agents.access.services import api_key_create

    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    users = get_user_model()
    user = users.objects.filter(username=USER).first()
    if user is None:
        user = users.objects.create_superuser(USER, f"{USER}@example.invalid", None)
    client = Client(secure=True)
    client.force_login(user)
    key = api_key_create(name=USER, scopes=["read"], actor=f"system:{USER}").plaintext
    return client, key


def _fill(path: str) -> tuple[str, str]:
    """``path`` with its placeholders filled, or ("", why) when the object is missing."""
    from agents.models import Agent, Execution
    from incidents.models import Incident

    if "{agent}" in path:
        agent = Agent.objects.order_by("name").values_list("name", flat=True).first()
        if agent is None:
            return "", "no agent"
        path = path.replace("{agent}", agent)
    if "{execution}" in path:
        execution = Execution.objects.order_by("-created_at").values_list("id", flat=True).first()
        if execution is None:
            return "", "no execution"
        path = path.replace("{execution}", str(execution))
    if "{incident}" in path:
        incident = Incident.objects.order_by("-opened_at").values_list("id", flat=True).first()
        if incident is None:
            return "", "no incident"
        path = path.replace("{incident}", str(incident))
    return path, ""


def measure(client: Any, key: str, path: str, *, n: int, warmup: int) -> Timing:
    filled, missing = _fill(path)
    if not filled:
        return Timing(path, 0, [], f"skipped: {missing}")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if filled.startswith("/api/") else {}
    response = client.get(filled, **headers)
    if response.status_code == 404:
        return Timing(filled, 404, [], "skipped: 404 (not built, or nothing there)")
    for _ in range(max(0, warmup - 1)):
        client.get(filled, **headers)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(filled, **headers)
        samples.append((time.perf_counter() - started) * 1000)
    note = "" if response.status_code == 200 else f"answered {response.status_code}"
    return Timing(filled, response.status_code, samples, note)


def table(timings: list[Timing], heading: str) -> str:
    lines = [
        heading,
        "",
        "| path | status | p50 ms | p95 ms | max ms | note |",
        "|---|---|---|---|---|---|",
    ]
    for t in timings:
        if not t.samples_ms:
            lines.append(f"| `{t.path}` | {t.status or '-'} | - | - | - | {t.note} |")
            continue
        lines.append(
            f"| `{t.path}` | {t.status} | {statistics.median(t.samples_ms):.1f} | "
            f"{t.pct(0.95):.1f} | {max(t.samples_ms):.1f} | {t.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--path", action="append", default=None, help="a path (repeatable)")
    parser.add_argument("--n", type=int, default=30, help="timed requests per path")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests first")
    parser.add_argument("--seed", type=int, default=None, help="(re)seed N executions first")
    parser.add_argument("--days", type=int, default=30, help="the seeded history's span")
    parser.add_argument("--seed-value", type=int, default=1, help="seed_history --seed")
    parser.add_argument("--wipe", action="store_true", help="empty the history before seeding")
    parser.add_argument("--out", type=Path, default=None, help="also append the table here")
    args = parser.parse_args(argv)
    if args.n < 1 or args.warmup < 0:
        parser.error("--n must be >= 1 and --warmup >= 0")
    if args.seed is not None and args.seed < 1:
        parser.error("--seed must be >= 1")
    _setup()
    from django.db import connection

    from agents.models import Execution

    notes = []
    if args.seed is not None:
        notes.append(seed(args.seed, args.days, wipe=args.wipe, seed_value=args.seed_value))
    # A serving process rebuilds the budget windows in its shared state at start-up and every
    # minute (job budget-windows-prepare); so does the benchmark, once, before timing. Without
    # it every budget read would take its spend from the ledger (a window unknown to the state:
    # docs/BENCHMARKS.md gives that cost), which only happens after the state was lost.
    from budgets.tasks import budget_windows_prepare

    notes.append(f"budget windows prepared: {budget_windows_prepare()}")
    client, key = _client()
    rows = Execution.objects.count()
    timings = [
        measure(client, key, path, n=args.n, warmup=args.warmup)
        for path in (args.path or DEFAULT_PATHS)
    ]
    heading = (
        f"Console server time, {rows:,} executions on {connection.vendor} "
        f"({args.n} requests per path after {args.warmup} warm-up)"
    )
    text = table(timings, heading)
    if notes:
        text = "\n".join(notes) + "\n\n" + text
    print(text)
    if args.out is not None:
        with args.out.open("a") as f:
            f.write(text + "\n\n")
    timed = [t for t in timings if t.samples_ms and t.status == 200]
    slow = [t.path for t in timed if t.pct(0.95) > 200]
    if slow:
        print(f"\np95 above 200 ms: {', '.join(slow)}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
