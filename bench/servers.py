"""ASGI server benchmark: daphne vs uvicorn (uvloop + httptools) vs uvicorn (asyncio + h11).

Each server runs ``console.asgi:application`` as a subprocess (own process group, its own
``BREAKWATER_VAR_DIR`` migrated first, ``DEBUG``/``DATABASE_URL``/``REDIS_URL`` unset, access logs
off) and ``wrk`` measures ``GET /healthz`` on 127.0.0.1:

* latency at concurrency 1: ``wrk -t1 -c1 --latency`` (p50, p99), after a warm-up;
* throughput at concurrency 10: ``wrk -t2 -c10`` (requests/s), after a warm-up;
* RSS of the server process afterwards (``VmRSS`` from ``/proc/PID/status``);
* for reference, the app alone: the same ASGI app called in-process with no server and no socket
  (ms per request), the floor that no server can go below.

Rounds alternate the servers (the order rotates each round, a fresh server process per round) and
the table shows the median of the rounds. Usage::

    .venv/bin/python bench/servers.py [--seconds 10] [--warmup 2] [--rounds 3]

Every process it starts is killed (process group) on the way out, and the whole run is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import HOST, cpu_s, free_port, kill_group, parse_wrk, rss_mib  # noqa: E402

PY = ROOT / ".venv" / "bin" / "python"
BIN = ROOT / ".venv" / "bin"


@dataclass(frozen=True)
class Server:
    key: str
    label: str

    def argv(self, port: int) -> list[str]:
        if self.key == "uvicorn-uvloop":
            # What production runs: uvloop + httptools, access log off, lifespan off.
            return [str(PY), "manage.py", "serve", "--port", str(port), "--no-embedded"]
        if self.key == "daphne":
            # -v 0: daphne's default verbosity (1) writes an access log line per request to
            # stdout; the uvicorn columns run without an access log, so this one does too.
            return [
                str(BIN / "daphne"),
                "-v",
                "0",
                "-b",
                HOST,
                "-p",
                str(port),
                "console.asgi:application",
            ]
        if self.key in ("uvicorn-asyncio", "uvicorn-cli"):
            loop, http = (
                ("asyncio", "h11") if self.key == "uvicorn-asyncio" else ("uvloop", "httptools")
            )
            return [
                str(BIN / "uvicorn"),
                "console.asgi:application",
                "--host",
                HOST,
                "--port",
                str(port),
                "--loop",
                loop,
                "--http",
                http,
                "--lifespan",
                "off",
                "--no-access-log",
                "--log-level",
                "warning",
            ]
        raise ValueError(self.key)


SERVERS = [
    Server("uvicorn-uvloop", "uvicorn + uvloop + httptools (`manage.py serve`)"),
    # The same server settings without the Breakwater engine that `serve` starts (config watcher
    # polling the database every second, record drainer): isolates the server from the engine.
    Server("uvicorn-cli", "uvicorn + uvloop + httptools (plain CLI)"),
    Server("daphne", "daphne 4"),
    Server("uvicorn-asyncio", "uvicorn + asyncio + h11"),
]


@dataclass
class Round:
    p50_ms: float
    p99_ms: float
    rps_c1: float
    rps_c10: float
    p99_c10_ms: float
    rss_mib: float
    cpu_ms: float
    errors: int


def _env(var_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in (
        "DEBUG",
        "DATABASE_URL",
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "DJANGO_SETTINGS_MODULE",
    ):
        env.pop(name, None)
    env["BREAKWATER_VAR_DIR"] = str(var_dir)
    env["LOG_LEVEL"] = "WARNING"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@contextlib.contextmanager
def _running(server: Server, var_dir: Path, log_path: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            server.argv(port),
            cwd=ROOT,
            env=_env(var_dir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            common.wait_ready(proc, f"http://{HOST}:{port}/healthz", log_path)
            yield proc.pid, port
        finally:
            kill_group(proc)


def _measure(server: Server, var_dir: Path, log_dir: Path, seconds: float, warmup: float) -> Round:
    with _running(server, var_dir, log_dir / f"{server.key}.log") as (pid, port):
        url = f"http://{HOST}:{port}/healthz"
        common.wrk(url, threads=1, conns=1, seconds=warmup)
        cpu0 = cpu_s(pid)
        c1 = parse_wrk(common.wrk(url, threads=1, conns=1, seconds=seconds))
        cpu1 = cpu_s(pid)
        common.wrk(url, threads=2, conns=10, seconds=warmup)
        cpu2 = cpu_s(pid)
        c10 = parse_wrk(common.wrk(url, threads=2, conns=10, seconds=seconds))
        cpu3 = cpu_s(pid)
        rss = rss_mib(pid)
    cpu_ms = (cpu1 - cpu0 + cpu3 - cpu2) * 1000 / max(1, c1.requests + c10.requests)
    return Round(
        c1.p50_ms, c1.p99_ms, c1.rps, c10.rps, c10.p99_ms, rss, cpu_ms, c1.errors + c10.errors
    )


# Calls the ASGI app directly on a uvloop loop: what a request costs Django with no server at all.
_APP_ONLY = """
import asyncio, json, os, sys, time
import uvloop
from console.asgi import application

SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
         "scheme": "http", "path": "/healthz", "raw_path": b"/healthz", "query_string": b"",
         "root_path": "", "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1),
         "server": ("127.0.0.1", 80)}

async def call():
    sent = False
    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(60)
        return {"type": "http.disconnect"}
    status = []
    async def send(message):
        if message["type"] == "http.response.start":
            status.append(message["status"])
    await application(dict(SCOPE), receive, send)
    assert status == [200], status

async def main(n):
    for _ in range(n // 5):
        await call()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        await call()
    wall_ms = (time.perf_counter() - start) / n * 1000
    print(json.dumps([wall_ms, (time.process_time() - cpu) / n * 1000]))

uvloop.run(main(int(sys.argv[1])))
"""


def _app_only_ms(var_dir: Path, n: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per request of the app alone."""
    out = subprocess.run(
        [str(PY), "-c", _APP_ONLY, str(n)],
        cwd=ROOT,
        env=_env(var_dir) | {"DJANGO_SETTINGS_MODULE": "console.settings"},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    ).stdout
    wall, cpu = json.loads(out.strip().splitlines()[-1])
    return float(wall), float(cpu)


def _migrate(var_dir: Path) -> None:
    subprocess.run(
        [str(PY), "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=_env(var_dir),
        check=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _table(
    results: dict[str, list[Round]],
    app_only: list[tuple[float, float]],
    rounds: int,
    seconds: float,
) -> str:
    head = [s for s in SERVERS if results.get(s.key)]
    lines = [
        f"GET /healthz, `console.asgi:application`, median of {rounds} rounds, "
        f"{seconds:g} s per measurement, {os.cpu_count()} cores, wrk on the same machine.",
        "",
        "| metric | " + " | ".join(s.label for s in head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    rows: list[tuple[str, str, str]] = [
        ("p50 latency, c=1 (ms)", "p50_ms", "{:.3f}"),
        ("p99 latency, c=1 (ms)", "p99_ms", "{:.3f}"),
        ("requests/s, c=1", "rps_c1", "{:,.0f}"),
        ("requests/s, c=10 (wrk -t2 -c10)", "rps_c10", "{:,.0f}"),
        ("p99 latency, c=10 (ms)", "p99_c10_ms", "{:.2f}"),
        ("server CPU per request (ms, user+sys, both runs)", "cpu_ms", "{:.3f}"),
        ("RSS after the run (MiB)", "rss_mib", "{:.1f}"),
        ("errors (non-2xx + socket), all rounds", "errors", "{:.0f}"),
    ]
    for title, attr, fmt in rows:
        cells = []
        for s in head:
            vals = [float(getattr(r, attr)) for r in results[s.key]]
            value = sum(vals) if attr == "errors" else _med(vals)
            cells.append(fmt.format(value))
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    if app_only:
        lines.append("")
        walls, cpus = [w for w, _ in app_only], [c for _, c in app_only]
        lines.append(
            f"Reference, no server: the same app called in-process on uvloop, one request at a "
            f"time, costs {_med(walls):.3f} ms wall and {_med(cpus):.3f} ms CPU per request "
            f"(median of {len(app_only)}; wall "
            + ", ".join(f"{v:.3f}" for v in walls)
            + "; CPU "
            + ", ".join(f"{v:.3f}" for v in cpus)
            + ")."
        )
    lines.append("")
    lines.append("Per round (p50 ms / p99 ms at c=1; req/s at c=10; CPU ms/req; RSS MiB):")
    lines.append("")
    for s in head:
        per = "; ".join(
            f"{r.p50_ms:.3f} / {r.p99_ms:.3f}; {r.rps_c10:,.0f}; {r.cpu_ms:.3f}; {r.rss_mib:.1f}"
            for r in results[s.key]
        )
        lines.append(f"- {s.label}: {per}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=[s.key for s in SERVERS])
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 60 or not 1 <= args.warmup <= 30 or not 1 <= args.rounds <= 9:
        parser.error("--seconds 1..60, --warmup 1..30, --rounds 1..9")
    servers = [s for s in SERVERS if not args.only or s.key in args.only]
    if not Path(common.WRK).exists():
        print(f"wrk not found at {common.WRK}", file=sys.stderr)
        return 2

    # A SIGTERM to this script unwinds through the finally blocks like Ctrl-C does.
    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)  # even when started with SIGINT ignored (`cmd &`)
    # Hard bound on the whole run: per server and round, start-up + 2 warm-ups + 2 runs + stop;
    # per round, the app-alone reference.
    budget = args.rounds * (len(servers) * (2 * (args.seconds + args.warmup) + 60) + 60) + 120
    signal.signal(signal.SIGALRM, _term)
    signal.alarm(int(budget))

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-servers-"))
    results: dict[str, list[Round]] = {s.key: [] for s in servers}
    app_only: list[tuple[float, float]] = []
    try:
        var_dir = tmp / "var"
        var_dir.mkdir()
        _migrate(var_dir)
        for i in range(args.rounds):
            order = servers[i % len(servers) :] + servers[: i % len(servers)]
            for server in order:
                r = _measure(server, var_dir, tmp, args.seconds, args.warmup)
                results[server.key].append(r)
                print(
                    f"round {i + 1} {server.key}: p50 {r.p50_ms:.3f} ms, p99 {r.p99_ms:.3f} ms, "
                    f"{r.rps_c10:,.0f} req/s at c=10, CPU {r.cpu_ms:.3f} ms/req, RSS {r.rss_mib:.1f} MiB, "
                    f"errors {r.errors}",
                    file=sys.stderr,
                    flush=True,
                )
            app_only.append(_app_only_ms(var_dir, 2000))
            print(
                f"round {i + 1} app alone: {app_only[-1][0]:.3f} ms wall, "
                f"{app_only[-1][1]:.3f} ms CPU per request",
                file=sys.stderr,
            )
    finally:
        signal.alarm(0)
        shutil.rmtree(tmp, ignore_errors=True)
    print(_table(results, app_only, args.rounds, args.seconds))
    print(f"\n1-min load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
