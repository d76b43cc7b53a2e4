"""``make bench``: the runtime-overhead benchmark, the gateway comparison, then short runs of the
server and client benchmarks.

Runs, one after the other, each as a child process that cleans up what it starts:

1. ``bench/runtime.py`` with its defaults (or ``--n``/``--rounds``): the figures of
   docs/BENCHMARKS.md, "Runtime overhead" (about 45 s);
2. ``bench/gateways.py`` with its defaults: direct vs Breakwater ``/v1/chat/completions`` on one
   fakellm, plus LiteLLM and Portkey when ``BENCH_PEERS=1`` (installed into ``var/bench/`` on
   first use); docs/BENCHMARKS.md, "Gateway comparison" (about 3 min, 6 with the peers, plus the
   first install);
3. ``bench/servers.py --seconds 3 --warmup 1 --rounds 1`` (needs ``wrk``; skipped without it);
4. ``bench/clients.py --rounds 1 --requests 1000 --warmup 100 ...`` (needs httpx installed aside
   in ``var/bench/httpx``; skipped without it).

The short settings of 3 and 4 are a smoke check that the scripts still run and a rough look at
the numbers; the figures in docs/DECISIONS.md come from their full default runs. Usage::

    .venv/bin/python bench/run.py [--runtime-only] [--n N] [--rounds R]

Exit status: the first failing benchmark's, else 0 (a skipped one is not a failure).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HTTPX_PATH = ROOT / "var" / "bench" / "httpx"
CHILD_TIMEOUT_S = 600.0
GATEWAYS_TIMEOUT_S = 6000.0  # bench/gateways.py bounds itself (installs included) below this
STOP_TIMEOUT_S = 15.0

_child: subprocess.Popen[bytes] | None = None


def _stop_child(signum: int, frame: object) -> None:
    """Pass SIGTERM on to the running benchmark (it cleans up after itself), then leave."""
    if _child is not None and _child.poll() is None:
        _child.send_signal(signal.SIGTERM)
        try:
            _child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _child.kill()
            _child.wait()
    raise SystemExit(128 + signum)


def run(title: str, argv: list[str], timeout_s: float = CHILD_TIMEOUT_S) -> int:
    global _child
    print(f"\n=== {title}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    _child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL)
    try:
        code = _child.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _child.send_signal(signal.SIGTERM)
        try:
            code = _child.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _child.kill()
            code = _child.wait()
        print(f"=== {title}: stopped after {timeout_s:.0f} s", flush=True)
        code = code or 1
    finally:
        _child = None
    print(f"=== {title}: exit {code} after {time.monotonic() - started:.0f} s", flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--runtime-only",
        action="store_true",
        help="skip the gateway, server and client benchmarks",
    )
    parser.add_argument("--n", type=int, help="bench/runtime.py --n")
    parser.add_argument("--rounds", type=int, help="bench/runtime.py --rounds")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_child)

    py = sys.executable
    runtime = [py, str(BENCH / "runtime.py")]
    if args.n is not None:
        runtime += ["--n", str(args.n)]
    if args.rounds is not None:
        runtime += ["--rounds", str(args.rounds)]
    codes = [run("runtime overhead", runtime)]
    if not args.runtime_only:
        # BENCH_PEERS=1 adds LiteLLM and Portkey (gateways.py reads it; passed on for the log).
        gateways = [py, str(BENCH / "gateways.py")]
        if os.environ.get("BENCH_PEERS", "") == "1":
            gateways.append("--peers")
        codes.append(run("gateway comparison", gateways, GATEWAYS_TIMEOUT_S))
        if shutil.which("wrk") or Path("/usr/bin/wrk").exists():
            servers = [py, str(BENCH / "servers.py"), "--seconds", "3", "--warmup", "1"]
            codes.append(run("ASGI servers (short)", [*servers, "--rounds", "1"]))
        else:
            print("\n=== ASGI servers: skipped (wrk is not installed)", flush=True)
        if (HTTPX_PATH / "httpx").is_dir():
            clients = [py, str(BENCH / "clients.py"), "--rounds", "1", "--requests", "1000"]
            clients += ["--warmup", "100", "--streams", "50", "--concurrent-requests", "500"]
            codes.append(run("HTTP clients (short)", clients))
        else:
            print(
                "\n=== HTTP clients: skipped (httpx not installed aside: "
                f".venv/bin/pip install --target {HTTPX_PATH.relative_to(ROOT)} httpx)",
                flush=True,
            )
    return next((code for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
