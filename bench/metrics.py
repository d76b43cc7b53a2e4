"""The metrics benchmark (docs/DECISIONS.md #16): what ``/metrics`` costs a scrape, and what
django-prometheus costs the ninja API routes.

Starts ``manage.py serve`` processes on the environment's database and Redis (``DATABASE_URL``,
``REDIS_URL``; distributed mode, one multiprocess directory each), side by side in one run:

* ``on``: the shipped settings (django-prometheus' middlewares run inline, its database wrapper,
  counting cache backends);
* ``stock``: django-prometheus' own middleware classes (``MiddlewareMixin``: each hook through
  ``sync_to_async``), database wrapper and cache backends as for ``on``
  (``bench/django_metrics_stock.py``);
* ``nodb``: as ``on`` without the database wrapper (``bench/django_metrics_nodb.py``);
* ``off``: ``BREAKWATER_DJANGO_METRICS=0``.

Then, per path, ``--n`` sequential requests on a kept-alive connection to each server, interleaved
(one request to each in turn, so drift hits all alike), after ``--warmup`` untimed ones; it
prints the median and p95 in ms, and the server's CPU time per request (the serve process
tree's, from /proc: what a loaded machine distorts least). ``--execute AGENT`` adds
``POST /api/v1/agents/AGENT/execute`` (the lean execute door, which django-prometheus must not
reach: on and off should be alike); each call has its own input, so the response cache is not
what is timed if the agent has one. ``/metrics`` is timed on ``on``, and with ``--baseline ROOT``
also on a ``serve`` run from another checkout (e.g. the main branch before #16), interleaved. An API key with the read
scope (and execute, with ``--execute``) is created (``manage.py create_api_key``). Usage::

    DATABASE_URL=postgres://... REDIS_URL=redis://... .venv/bin/python bench/metrics.py \\
        [--n 400] [--warmup 30] [--path /api/v1/agents ...] [--execute AGENT] [--port-base 19100]
        [--baseline ROOT]

The database should hold the deployment to measure (e.g. 10 agents, 20 deployments, 30 budgets).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import HOST, kill_group, provenance, tree_cpu_s, wait_ready  # noqa: E402

DEFAULT_PATHS = ("/api/v1/agents", "/api/v1/stats/agents?window=24h")
EXECUTE = "/api/v1/agents/"  # + AGENT + "/execute": a POST
VARIANTS: dict[str, dict[str, str]] = {
    "on": {},
    "stock": {"DJANGO_SETTINGS_MODULE": "bench.django_metrics_stock"},
    "nodb": {"DJANGO_SETTINGS_MODULE": "bench.django_metrics_nodb"},
    "off": {"BREAKWATER_DJANGO_METRICS": "0"},
}


def _key(scopes: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "create_api_key",
            "--name",
            "bench-metrics",
            "--scopes",
            scopes,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()[0]


def _get(
    conn: http.client.HTTPConnection,
    path: str,
    headers: dict[str, str],
    body: bytes | None = None,
) -> float:
    """One request (a POST when there is a body); its wall time in ms."""
    method = "GET" if body is None else "POST"
    start = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    answer = response.read()
    elapsed = (time.perf_counter() - start) * 1000
    if response.status != 200:
        raise RuntimeError(f"{method} {path}: {response.status} {answer[:200]!r}")
    return elapsed


def _body(conn: http.client.HTTPConnection) -> bytes:
    conn.request("GET", "/metrics")
    return conn.getresponse().read()


def _stats(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{statistics.median(ordered):7.2f} {p95:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--path", action="append", default=None)
    parser.add_argument("--execute", metavar="AGENT", default=None, help="also time its execute")
    parser.add_argument("--port-base", type=int, default=19100)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout's root")
    args = parser.parse_args()
    paths = list(args.path or DEFAULT_PATHS)
    if args.execute is not None:
        paths.append(f"{EXECUTE}{args.execute}/execute")
    scopes = "read" if args.execute is None else "read,execute"
    headers = {"Authorization": f"Bearer {_key(scopes)}", "Content-Type": "application/json"}
    servers: dict[str, tuple[subprocess.Popen[bytes], http.client.HTTPConnection]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        try:
            variants = [(name, extra, ROOT) for name, extra in VARIANTS.items()]
            if args.baseline is not None:
                variants.append(("baseline", {}, args.baseline.resolve()))
            for offset, (name, extra, root) in enumerate(variants):
                port = args.port_base + offset
                mp = Path(tmp) / f"mp-{name}"
                mp.mkdir()
                log = Path(tmp) / f"{name}.log"
                env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp), **extra}
                proc = subprocess.Popen(
                    [sys.executable, "manage.py", "serve", "--port", str(port)],
                    cwd=root,
                    env=env,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                wait_ready(proc, f"http://{HOST}:{port}/healthz", log)
                servers[name] = (proc, http.client.HTTPConnection(HOST, port, timeout=30))
            print(f"metrics benchmark, {provenance(('console', 'agents', 'budgets'))}")
            print(f"{'path':40} {'variant':8} {'p50 ms':>7} {'p95 ms':>7} {'CPU µs/req':>10}")
            measured = {name: servers[name] for name in VARIANTS}
            for path in paths:
                samples: dict[str, list[float]] = {name: [] for name in measured}
                cpu: dict[str, float] = {}
                for i in range(args.warmup + args.n):
                    if i == args.warmup:
                        cpu = {name: tree_cpu_s(proc.pid) for name, (proc, _) in measured.items()}
                    body = (
                        json.dumps({"input": f"bench {i}"}).encode()
                        if path.startswith(EXECUTE)
                        else None
                    )
                    for name, (_, conn) in measured.items():
                        elapsed = _get(conn, path, headers, body)
                        if i >= args.warmup:
                            samples[name].append(elapsed)
                for name, (proc, _) in measured.items():
                    per_request = (tree_cpu_s(proc.pid) - cpu[name]) / args.n * 1e6
                    print(f"{path:40} {name:8} {_stats(samples[name])} {per_request:10.0f}")
                off = statistics.median(samples["off"])
                for name in ("on", "stock", "nodb"):
                    delta = statistics.median(samples[name]) - off
                    print(f"{'':40} {name} - off: {delta * 1000:+.0f} µs at the median")
            scraped = [name for name in ("on", "baseline") if name in servers]
            scrapes: dict[str, list[float]] = {name: [] for name in scraped}
            cpu = {}
            for i in range(args.warmup + args.n):
                if i == args.warmup:
                    cpu = {name: tree_cpu_s(servers[name][0].pid) for name in scraped}
                for name in scraped:
                    elapsed = _get(servers[name][1], "/metrics", {})
                    if i >= args.warmup:
                        scrapes[name].append(elapsed)
            for name in scraped:
                per_scrape = (tree_cpu_s(servers[name][0].pid) - cpu[name]) / args.n * 1e6
                size = len(_body(servers[name][1]))
                print(
                    f"{'/metrics':40} {name:8} {_stats(scrapes[name])} {per_scrape:10.0f}"
                    f"  ({size:,} bytes)"
                )
        finally:
            for proc, conn in servers.values():
                conn.close()
                kill_group(proc)


if __name__ == "__main__":
    main()
