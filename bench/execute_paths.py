"""The two front doors of ``POST /api/v1/agents/{name}/execute``, side by side: the ninja route
(Django's request machinery) and the lean ASGI app (``agents/doors/rest.py``), with
``/v1/chat/completions`` as the reference. Figures and method: docs/DECISIONS.md #5.

Every arm runs the same uvicorn launcher (uvloop, httptools, the engine started, as
``manage.py serve --no-embedded``) with the same config (``bench/gateways.py``'s agent with
every safeguard on, Redis state, a zero-delay fakellm); only the ASGI app differs
(``console.asgi:_django_http`` for ninja, ``console.asgi:application`` for the others). Per arm
and round: p50/p99 at concurrency 1 (``wrk -t1 -c1``), requests/s at concurrency 10, CPU-ms per
request of the server process over the c=1 run. Rounds rotate the arms; medians are reported.

Usage::

    .venv/bin/python bench/execute_paths.py [--rounds 3] [--seconds 10] [--redis-url URL]

Needs ``wrk`` (installed with apt when missing and root) and an empty Redis database (it is
flushed between arms; default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import HOST, free_port, kill_group, parse_wrk, tree_cpu_s  # noqa: E402
from bench.gateways import (  # noqa: E402
    AGENT,
    UPSTREAM_KEY,
    _clean_env,
    _redis,
    breakwater_config,
    start_fakellm,
)

PY = ROOT / ".venv" / "bin" / "python"
ARMS = {
    "ninja": "console.asgi:_django_http",
    "lean": "console.asgi:application",
    "v1": "console.asgi:application",
}
EXECUTE = f"/api/v1/agents/{AGENT}/execute"
# `manage.py serve --no-embedded`, but for a chosen ASGI app: argv = "module:attr", port.
LAUNCHER = """
import asyncio, os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
import django
django.setup()
import uvicorn, uvloop

async def main():
    from agents.engine import engine_shutdown, get_engine
    config = uvicorn.Config(
        sys.argv[1], host="127.0.0.1", port=int(sys.argv[2]), loop="uvloop", http="httptools",
        lifespan="off", access_log=False, log_level="warning", server_header=False,
    )
    await get_engine().start()
    try:
        await uvicorn.Server(config).serve()
    finally:
        await engine_shutdown()

with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(main())
"""


def _script(path: Path, key: str, body: str) -> Path:
    """A wrk script posting ``body`` with a unique text per request (no cache hits)."""
    path.write_text(
        "\n".join(
            [
                'wrk.method = "POST"',
                'wrk.headers["Content-Type"] = "application/json"',
                f'wrk.headers["Authorization"] = "Bearer {key}"',
                "local n = 0",
                "function init(args) nonce = args[1] or 'x' end",
                "function request() n = n + 1",
                f"  return wrk.format(nil, nil, nil, {body})",
                "end",
            ]
        )
        + "\n"
    )
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-execute-"))
    var = tmp / "var"
    var.mkdir()
    env = _clean_env(
        REDIS_URL=args.redis_url,
        BREAKWATER_VAR_DIR=str(var),
        LOG_LEVEL="WARNING",
        BENCH_UPSTREAM_KEY=UPSTREAM_KEY,
    )
    launcher = tmp / "launch.py"
    launcher.write_text(LAUNCHER)
    procs: list[subprocess.Popen[bytes]] = []

    def manage(*argv: str) -> str:
        return subprocess.run(
            [str(PY), "manage.py", *argv],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        ).stdout

    def flush() -> None:
        client = _redis(args.redis_url)
        client.flushdb()
        client.close()

    try:
        fake, fake_url = start_fakellm(tmp / "fakellm.log", ROOT)
        procs.append(fake)
        flush()
        (tmp / "bw.yaml").write_text(breakwater_config(fake_url))
        manage("migrate", "--no-input", "-v", "0")
        manage("apply", "-f", str(tmp / "bw.yaml"))
        out = manage("create_api_key", "--name", "bench", "--scopes", "execute", "--agents", AGENT)
        key = out.strip().splitlines()[-1]
        unique = "'[' .. nonce .. '-' .. n .. '] Where is my order?'"
        scripts = {
            "execute": _script(
                tmp / "execute.lua", key, f"'{{\"input\": \"' .. {unique} .. '\"}}'"
            ),
            "v1": _script(
                tmp / "v1.lua",
                key,
                f'\'{{"model": "{AGENT}", "messages": [{{"role": "user", '
                f'"content": "\' .. {unique} .. \'"}}]}}\'',
            ),
        }
        results: dict[str, list[tuple[float, float, float, float]]] = {arm: [] for arm in ARMS}
        arms = list(ARMS)
        for round_ in range(args.rounds):
            for arm in arms[round_ % 3 :] + arms[: round_ % 3]:
                flush()
                port = free_port()
                log = tmp / f"{arm}-{round_}.log"
                with log.open("wb") as out_file:
                    proc = subprocess.Popen(
                        [str(PY), str(launcher), ARMS[arm], str(port)],
                        cwd=ROOT,
                        env=env,
                        stdout=out_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                procs.append(proc)
                base = f"http://{HOST}:{port}"
                url = base + ("/v1/chat/completions" if arm == "v1" else EXECUTE)
                script = scripts["v1" if arm == "v1" else "execute"]
                common.wait_ready(proc, f"{base}/readyz", log, timeout_s=60)
                sanity = urllib.request.Request(
                    base + EXECUTE,
                    data=b'{"input": "sanity"}',
                    method="POST",
                    headers={"Authorization": f"Bearer {key}"},
                )
                with urllib.request.urlopen(sanity, timeout=10) as resp:
                    answer = json.loads(resp.read())
                if answer["status"] != "succeeded":
                    raise RuntimeError(f"{arm}: the sanity execution did not succeed: {answer}")

                def run(conns: int, seconds: float, url: str = url, script: Path = script) -> str:
                    return common.wrk(
                        url,
                        threads=1,
                        conns=conns,
                        seconds=seconds,
                        script=script,
                        script_args=(secrets.token_hex(4),),
                    )

                run(1, 2.0)  # warm-up
                cpu0 = tree_cpu_s(proc.pid)
                c1 = parse_wrk(run(1, args.seconds))
                cpu = (tree_cpu_s(proc.pid) - cpu0) * 1000 / max(1, c1.requests)
                c10 = parse_wrk(run(10, args.seconds))
                if c1.errors or c10.errors:
                    raise RuntimeError(f"{arm}: errors under load: {c1}, {c10}")
                results[arm].append((c1.p50_ms, c1.p99_ms, cpu, c10.rps))
                print(
                    f"round {round_} {arm}: p50 {c1.p50_ms:.3f} ms, p99 {c1.p99_ms:.3f} ms, "
                    f"CPU {cpu:.3f} ms/request, c10 {c10.rps:.0f} requests/s",
                    flush=True,
                )
                kill_group(proc)
                procs.remove(proc)
        print("\n| arm | p50 c=1 (ms) | p99 c=1 (ms) | CPU per request (ms) | requests/s c=10 |")
        print("|---|---:|---:|---:|---:|")
        for arm, rows in results.items():
            p50, p99, cpu, rps = (statistics.median(column) for column in zip(*rows, strict=True))
            print(f"| {arm} | {p50:.2f} | {p99:.2f} | {cpu:.3f} | {rps:.0f} |")
    finally:
        for proc in procs:
            kill_group(proc)
        flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
