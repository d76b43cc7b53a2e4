"""Provider-call HTTP client benchmark: httpx.AsyncClient vs aiohttp.ClientSession.

A zero-delay upstream (a tiny aiohttp.web server, in its own process) answers
``POST /v1/chat/completions`` with a fixed OpenAI-style chat completion, or with an SSE stream of
50 ``chat.completion.chunk`` events and ``[DONE]`` when the body says ``"stream": true``.

Each client library is measured in its own fresh process (one pooled client with keep-alive, on
uvloop like ``manage.py serve``), which POSTs a JSON chat request and parses the JSON answer:

* sequential: per-request latency p50/p99 over ``--requests`` after ``--warmup`` requests, and
  CPU-ms per request (``time.process_time`` delta / n) of the client process;
* concurrent: ``--concurrent-requests`` from 10 tasks sharing the client: requests/s and CPU-ms
  per request;
* streaming: ``--streams`` SSE responses of 50 chunks consumed line by line (each chunk parsed):
  time per stream p50/p99 and CPU-ms per stream.

Rounds alternate the order of the libraries; the table shows medians over the rounds. httpx is not
a project dependency: install it aside with
``.venv/bin/pip install --target var/bench/httpx httpx`` (this script adds that path). Usage::

    .venv/bin/python bench/clients.py [--rounds 3] [--requests 5000] [--warmup 500] [--streams 200]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import kill_group  # noqa: E402

HTTPX_PATH = ROOT / "var" / "bench" / "httpx"
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
STREAM_CHUNKS = 50
CONCURRENCY = 10
CLIENT_TIMEOUT_S = 240.0
LIBRARIES = ("httpx", "aiohttp")

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {
            "role": "system",
            "content": "You are a customer-support agent for an online shop. Answer briefly, "
            "cite the order number when there is one, and never promise refunds yourself.",
        },
        {
            "role": "user",
            "content": "Hi, my order 10423 arrived with a cracked screen protector. "
            "Can you send a replacement, or should I return the whole package?",
        },
    ],
    "max_tokens": 256,
    "temperature": 0.2,
}

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion",
        "created": 1764316800,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Sorry about that! I have asked the warehouse to send a "
                    "replacement screen protector for order 10423; you do not need to return "
                    "anything. It should arrive within 3 working days.",
                },
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 64, "completion_tokens": 38, "total_tokens": 102},
    },
    separators=(",", ":"),
).encode()


def _chunk(i: int) -> bytes:
    delta: dict[str, str] = {"content": f"tok{i} "}
    if i == 0:
        delta["role"] = "assistant"
    body = {
        "id": "chatcmpl-bench0001",
        "object": "chat.completion.chunk",
        "created": 1764316800,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": "stop" if i == STREAM_CHUNKS - 1 else None,
            }
        ],
    }
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


STREAM_EVENTS = [_chunk(i) for i in range(STREAM_CHUNKS)] + [b"data: [DONE]\n\n"]


# --- upstream (separate process) ---------------------------------------------------------------


def run_upstream(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def completions(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=COMPLETION, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in STREAM_EVENTS:  # one write (one HTTP chunk) per SSE event
            await resp.write(event)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post(PATH, completions)
    web.run_app(
        app, host=HOST, port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


# --- clients -----------------------------------------------------------------------------------

Post = Callable[[], Awaitable[None]]
Stream = Callable[[], Awaitable[None]]


def _check_completion(data: dict[str, Any]) -> None:
    if data["choices"][0]["finish_reason"] != "stop":
        raise RuntimeError(f"unexpected completion {data!r}")


def _check_chunks(n: int) -> None:
    if n != STREAM_CHUNKS:
        raise RuntimeError(f"stream had {n} chunks, expected {STREAM_CHUNKS}")


@contextlib.asynccontextmanager
async def _httpx_client(base: str) -> AsyncIterator[tuple[Post, Stream, str]]:
    if str(HTTPX_PATH) not in sys.path:
        sys.path.append(str(HTTPX_PATH))
    import httpx

    limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
    async with httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client:

        async def post() -> None:
            resp = await client.post(PATH, json=REQUEST)
            resp.raise_for_status()
            _check_completion(resp.json())

        async def stream() -> None:
            n = 0
            async with client.stream("POST", PATH, json={**REQUEST, "stream": True}) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    json.loads(line[6:])
                    n += 1
            _check_chunks(n)

        yield post, stream, f"httpx {httpx.__version__}"


@contextlib.asynccontextmanager
async def _aiohttp_client(base: str) -> AsyncIterator[tuple[Post, Stream, str]]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=20)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:

        async def post() -> None:
            async with session.post(PATH, json=REQUEST) as resp:
                resp.raise_for_status()
                _check_completion(await resp.json())

        async def stream() -> None:
            n = 0
            async with session.post(PATH, json={**REQUEST, "stream": True}) as resp:
                resp.raise_for_status()
                async for raw in resp.content:  # line by line
                    line = raw.decode().rstrip("\r\n")
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        break
                    json.loads(line[6:])
                    n += 1
            _check_chunks(n)

        yield post, stream, f"aiohttp {aiohttp.__version__}"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(call: Callable[[], Awaitable[None]], n: int) -> tuple[list[float], float]:
    """(latencies in ms, CPU ms per call) for n sequential calls."""
    lat: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append((time.perf_counter() - t0) * 1000)
    return lat, (time.process_time() - cpu0) * 1000 / n


async def _concurrent(call: Post, n: int, tasks: int) -> tuple[float, float, float]:
    """(requests/s, CPU ms per request, p99 ms) for n calls shared by `tasks` tasks."""
    remaining = n
    lat: list[float] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t0 = time.perf_counter()
            await call()
            lat.append((time.perf_counter() - t0) * 1000)

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(tasks):
            group.create_task(worker())
    wall = time.perf_counter() - t0
    return n / wall, (time.process_time() - cpu0) * 1000 / n, _pct(lat, 0.99)


async def measure(
    library: str, base: str, *, n: int, warmup: int, n_concurrent: int, streams: int
) -> dict[str, Any]:
    factory = _httpx_client if library == "httpx" else _aiohttp_client
    async with asyncio.timeout(CLIENT_TIMEOUT_S - 10), factory(base) as (post, stream, version):
        await _timed(post, warmup)
        lat, cpu_seq = await _timed(post, n)
        await _concurrent(post, warmup, CONCURRENCY)
        rps, cpu_conc, p99_conc = await _concurrent(post, n_concurrent, CONCURRENCY)
        await _timed(stream, max(1, streams // 10))
        slat, cpu_stream = await _timed(stream, streams)
    return {
        "version": version,
        "p50_ms": statistics.median(lat),
        "p99_ms": _pct(lat, 0.99),
        "cpu_ms_seq": cpu_seq,
        "rps_c10": rps,
        "p99_c10_ms": p99_conc,
        "cpu_ms_c10": cpu_conc,
        "stream_p50_ms": statistics.median(slat),
        "stream_p99_ms": _pct(slat, 0.99),
        "cpu_ms_stream": cpu_stream,
    }


def run_client(args: argparse.Namespace) -> None:
    import uvloop

    coro = measure(
        args.client,
        f"http://{HOST}:{args.port}",
        n=args.requests,
        warmup=args.warmup,
        n_concurrent=args.concurrent_requests,
        streams=args.streams,
    )
    result = uvloop.run(coro) if args.loop == "uvloop" else asyncio.run(coro)
    print(json.dumps(result))


# --- orchestration -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"upstream exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"upstream not listening after {timeout}s")


ROWS: list[tuple[str, str, str]] = [
    ("sequential p50 latency (ms)", "p50_ms", "{:.3f}"),
    ("sequential p99 latency (ms)", "p99_ms", "{:.3f}"),
    ("CPU per request, sequential (ms)", "cpu_ms_seq", "{:.3f}"),
    (f"requests/s, {CONCURRENCY} concurrent tasks", "rps_c10", "{:,.0f}"),
    (f"p99 latency, {CONCURRENCY} concurrent (ms)", "p99_c10_ms", "{:.2f}"),
    (f"CPU per request, {CONCURRENCY} concurrent (ms)", "cpu_ms_c10", "{:.3f}"),
    (f"SSE stream of {STREAM_CHUNKS} chunks, p50 (ms)", "stream_p50_ms", "{:.3f}"),
    (f"SSE stream of {STREAM_CHUNKS} chunks, p99 (ms)", "stream_p99_ms", "{:.3f}"),
    ("CPU per stream (ms)", "cpu_ms_stream", "{:.3f}"),
]


def _table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> str:
    libs = [lib for lib in LIBRARIES if results.get(lib)]
    heads = [results[lib][0]["version"] for lib in libs]
    lines = [
        f"POST JSON to a zero-delay local aiohttp.web upstream (separate process), client on "
        f"{args.loop}, one "
        f"pooled keep-alive client per process; median of {args.rounds} rounds; "
        f"sequential: {args.requests} requests after {args.warmup} warm-up; concurrent: "
        f"{args.concurrent_requests} requests from {CONCURRENCY} tasks after {args.warmup}; "
        f"streaming: {args.streams} streams after {max(1, args.streams // 10)}.",
        "",
        "| metric | " + " | ".join(heads) + " |",
        "|---|" + "---:|" * len(libs),
    ]
    for title, key, fmt in ROWS:
        cells = [fmt.format(statistics.median(r[key] for r in results[lib])) for lib in libs]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Per round (seq p50 ms; req/s at c=10; CPU ms/req seq; stream p50 ms):")
    lines.append("")
    for lib, head in zip(libs, heads, strict=True):
        per = "; ".join(
            f"{r['p50_ms']:.3f}, {r['rps_c10']:,.0f}, {r['cpu_ms_seq']:.3f}, "
            f"{r['stream_p50_ms']:.3f}"
            for r in results[lib]
        )
        lines.append(f"- {head}: {per}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--concurrent-requests", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--only", action="append", choices=LIBRARIES)
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="client event loop"
    )
    # Internal: the two kinds of child process this script starts.
    parser.add_argument("--upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=LIBRARIES, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not (
        1 <= args.rounds <= 9
        and 100 <= args.requests <= 50_000
        and 10 <= args.warmup <= 5000
        and 10 <= args.streams <= 5000
        and 100 <= args.concurrent_requests <= 50_000
    ):
        parser.error(
            "--rounds 1..9, --requests 100..50000, --warmup 10..5000, --streams 10..5000, "
            "--concurrent-requests 100..50000"
        )
    if args.upstream:
        run_upstream(args.upstream)
        return 0
    if args.client:
        run_client(args)
        return 0

    libs = [lib for lib in LIBRARIES if not args.only or lib in args.only]
    if "httpx" in libs and not (HTTPX_PATH / "httpx").is_dir():
        print(
            f"httpx not found in {HTTPX_PATH}: "
            f".venv/bin/pip install --target {HTTPX_PATH.relative_to(ROOT)} httpx",
            file=sys.stderr,
        )
        return 2

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)  # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGALRM, _term)
    signal.alarm(int(args.rounds * len(libs) * CLIENT_TIMEOUT_S + 60))

    load_before = os.getloadavg()[0]
    port = _free_port()
    upstream = subprocess.Popen(
        [sys.executable, __file__, "--upstream", str(port)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    results: dict[str, list[dict[str, Any]]] = {lib: [] for lib in libs}
    try:
        _wait_listening(upstream, port)
        for i in range(args.rounds):
            order = libs if i % 2 == 0 else libs[::-1]
            for lib in order:
                child = [sys.executable, __file__, "--client", lib, "--port", str(port)]
                child += ["--requests", str(args.requests), "--warmup", str(args.warmup)]
                child += ["--streams", str(args.streams), "--loop", args.loop]
                child += ["--concurrent-requests", str(args.concurrent_requests)]
                out = subprocess.run(
                    child,
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=CLIENT_TIMEOUT_S,
                    check=False,
                    stdin=subprocess.DEVNULL,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"{lib} client failed:\n{out.stderr[-3000:]}")
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[lib].append(r)
                print(
                    f"round {i + 1} {lib}: p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms, "
                    f"{r['rps_c10']:,.0f} req/s at c={CONCURRENCY}, CPU {r['cpu_ms_seq']:.3f} "
                    f"ms/req, stream p50 {r['stream_p50_ms']:.3f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        signal.alarm(0)
        kill_group(upstream)
    print(_table(results, args))
    print(f"\n1-min load average before/after: {load_before:.2f} / {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
