"""Runtime overhead benchmark: what the executor's safeguards add to one provider call.

A zero-latency ``fakellm`` (``python -m agents.devtools.fakellm --port 0``) runs in its own process. In
this process, on uvloop, the arms call it one execution at a time (concurrency 1), side by side:

* ``direct``: ``ProviderRouter.chat`` (the OpenAI wire format, the pooled aiohttp session) with the
  same messages: what any client pays for the call itself;
* ``embedded``: ``Executor.execute`` with every safeguard on (agent breaker, rpm + tpm rate limits
  set high enough never to refuse, two deployments of the model to balance with in-flight leases,
  a fallback model, ``max_retries=2``, a 10 s deadline, budgets when the runtime has them, no
  tools) on :class:`MemoryState`, recording to a :class:`FileJournal` in a temp dir and updating
  the Prometheus metrics (``CompositeEvents(MetricsEvents())``, as ``agents.engine.Engine`` does);
* ``redis``: the same on :class:`RedisState` (unique key prefix) recording to a
  :class:`RedisJournal` (a stream under the same prefix), both on one
  :class:`~agents.runtime.redis_wire.RedisWire` (the hot-path client, as in production);
* with ``--what-if redis-py``: ``redis-py``, the ``redis`` arm on redis-py's asyncio client.

Every arm shares one ``ProviderRouter`` (one keep-alive connection to fakellm). A round runs
``--n`` executions per arm in chunks of ``--chunk``, the arms interleaved chunk by chunk (the order
rotating), so that a load swing on the machine hits every arm alike. Per arm and round: latency
p50/p99 (``perf_counter`` around the call) and CPU-ms per execution (``time.process_time`` delta
over the arm's chunks / n, this process only). Added latency = arm minus direct (difference of
the p50s, and of the p99s); added CPU likewise. Redis traffic per execution is counted on the
client (round trips = socket writes, commands sent together being one; and the commands
sent) in a separate pass after the rounds, and cross-checked with the server's
``INFO commandstats`` delta over the rounds (server-wide: other clients of the server count too).

Checks: every execution succeeds on its first attempt without fallback, and fakellm's request
count equals the calls made (no hidden retries). The report also gives the deployments chosen
and the size of the agent's rate-limit log at the end of each round.

Usage::

    .venv/bin/python bench/runtime.py [--n 2000] [--rounds 3] [--warmup 500] [--no-redis]
    .venv/bin/python bench/runtime.py --what-if redis-py
    .venv/bin/python bench/runtime.py --profile embedded   # pyinstrument if installed, else cProfile

The Redis arms use a private ``redis-server`` started for the run when one is installed (its
``INFO commandstats`` then count this run only), else ``--redis-url`` / ``$REDIS_URL``; none with
``--no-redis``. The run is bounded (``--max-seconds``); fakellm, the temp dir and the Redis keys
are removed on the way out, whatever happens. Results and method: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import secrets
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import kill_group  # noqa: E402

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0
AGENT = "bench-agent"
MODEL = "bench-model"
FALLBACK = "bench-fallback"
SYSTEM_PROMPT = (
    "You are a customer-support agent for an online shop. Answer briefly, cite the order "
    "number when there is one, and never promise refunds yourself."
)
USER_TEXT = (
    "Hi, my order 10423 arrived with a cracked screen protector. Can you send a replacement, "
    "or should I return the whole package?"
)
MAX_TOKENS = 256
TIMEOUT_S = 10.0
TARGETS_MS = {"embedded": 0.5, "redis": 1.0}  # added p50, from the issue
WHAT_IFS = ("redis-py",)
# Every Redis key of this run starts with this (each Redis arm adds ":<arm>"), so that the keys can
# be removed at the end even when the event loop was interrupted.
RUN_PREFIX = f"bwbench:{secrets.token_hex(4)}"


# --- fakellm (separate process) ----------------------------------------------------------------


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server (no persistence) on a free port, for clean command statistics."""
    import socket

    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
            return proc, f"redis://{HOST}:{port}/0"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    kill_group(proc)
    raise RuntimeError("redis-server did not start")


def start_fakellm() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agents.devtools.fakellm",
            "--host",
            HOST,
            "--port",
            "0",
            "--seed",
            "1",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT_S
    buffer = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            for line in buffer.decode(errors="replace").splitlines():
                if line.startswith("fakellm listening on "):
                    return proc, line.removeprefix("fakellm listening on ").strip()
        if proc.poll() is not None:
            break
    kill_group(proc)
    raise RuntimeError(f"fakellm did not start: {buffer.decode(errors='replace')!r}")


def fakellm_total(url: str) -> int:
    with urllib.request.urlopen(f"{url}/_admin/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["total"])


# --- configuration -------------------------------------------------------------------------------


def build_config(base_url: str) -> Any:
    from agents.runtime.state import BreakerConfig
    from agents.runtime.types import AgentConfig, Deployment, ProviderConfig, RateLimits

    provider = ProviderConfig("fakellm", "openai", f"{base_url}/v1", "sk-bench")

    def deployment(id: int, model: str) -> Deployment:
        return Deployment(
            id=id,
            model=model,
            provider=provider,
            upstream_model=f"{model}-upstream",
            input_usd_per_mtok=Decimal("0.15"),
            output_usd_per_mtok=Decimal("0.60"),
            max_concurrency=64,
            weight=1,
        )

    agent = AgentConfig(
        name=AGENT,
        model=MODEL,
        fallback_models=(FALLBACK,),
        system_prompt=SYSTEM_PROMPT,
        timeout_s=TIMEOUT_S,
        max_retries=2,
        max_tokens=MAX_TOKENS,
        breaker=BreakerConfig(failure_threshold=5, recovery_timeout_s=60.0, half_open_max_calls=1),
        # Far above what one process can do in a minute: every execution is admitted, and the
        # sliding logs still hold every admission of the last 60 s, as they would in production.
        rate_limits=RateLimits(rpm=100_000_000, tpm=100_000_000_000),
        tools=(),
    )

    from agents.runtime import types

    # Budgets (global and per agent, far above what the run spends), when this runtime has them.
    budget_rule = getattr(types, "BudgetRule", None)
    budgets: tuple[Any, ...] = ()
    if budget_rule is not None:
        budgets = (
            budget_rule(1, "global", "*", "daily", Decimal(1_000_000)),
            budget_rule(2, "agent", AGENT, "daily", Decimal(800_000)),
        )

    @dataclass
    class StaticConfig:
        agents: dict[str, AgentConfig]
        by_model: dict[str, tuple[Deployment, ...]]

        def agent(self, name: str) -> AgentConfig | None:
            return self.agents.get(name)

        def deployments(self, model: str) -> tuple[Deployment, ...]:
            return self.by_model.get(model, ())

        def budgets(self, agent: str, api_key_id: int | None) -> tuple[Any, ...]:
            return budgets if agent == AGENT else ()

    return StaticConfig(
        {AGENT: agent},
        {
            MODEL: (deployment(1, MODEL), deployment(2, MODEL)),
            FALLBACK: (deployment(3, FALLBACK),),
        },
    )


# --- counting Redis connection -------------------------------------------------------------------


def counting_connection_class() -> tuple[type, Counter[str]]:
    """A redis-py asyncio Connection that counts round trips (``send_packed_command`` calls,
    a pipeline being one) under ``"round_trips"`` and every command sent under its name
    (``pack_commands``, for a pipeline, packs each command with ``pack_command``)."""
    from redis.asyncio.connection import Connection

    counts: Counter[str] = Counter()

    class CountingConnection(Connection):
        def pack_command(self, *args: Any) -> list[bytes]:
            if args:
                counts[_name(args[0])] += 1
            return super().pack_command(*args)

        async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
            counts["round_trips"] += 1
            await super().send_packed_command(command, check_health)

    return CountingConnection, counts


def _name(value: Any) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text.split()[0].upper()


def command_stats(info: dict[str, Any]) -> dict[str, tuple[int, float]]:
    """``{command: (calls, usec)}`` from ``INFO commandstats``."""
    out = {}
    for key, value in info.items():
        if key.startswith("cmdstat_") and isinstance(value, dict):
            out[key.removeprefix("cmdstat_").upper()] = (
                int(value.get("calls", 0)),
                float(value.get("usec", 0)),
            )
    return out


# --- what-ifs: the arms' alternatives ---------------------------------------------------------
#
# ``--what-if redis-py`` adds the arm ``redis-py``: the ``redis`` arm on redis-py's asyncio client
# instead of the hot path's RedisWire (what the Redis arm measured before the wire landed), to
# show the client's share side by side. Landed fixes' what-ifs are deleted (git history has them).


def counting_wire(url: str) -> tuple[Any, Counter[str]]:
    """A RedisWire that counts commands by name and socket writes (round trips)."""
    from agents.runtime import redis_wire

    counts: Counter[str] = Counter()

    class CountingConnection(redis_wire._Connection):
        def send(self, args: tuple[Any, ...]) -> Any:
            counts[_name(args[0])] += 1
            return super().send(args)

        def _flush(self) -> None:
            if self._out and not self.closed:
                counts["round_trips"] += 1
            super()._flush()

    wire = redis_wire.RedisWire(url, client_name=None)
    wire.connection_class = CountingConnection
    return wire, counts


@dataclass
class Sample:
    latencies_ms: list[float] = field(default_factory=list)
    cpu_s: float = 0.0

    @property
    def n(self) -> int:
        return len(self.latencies_ms)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    @property
    def cpu_ms(self) -> float:
        return self.cpu_s * 1000 / max(1, self.n)


Call = Callable[[], Awaitable[None]]


async def timed_chunk(call: Call, n: int, sample: Sample | None) -> None:
    perf = time.perf_counter
    latencies = sample.latencies_ms if sample is not None else []
    cpu0 = time.process_time()
    for _ in range(n):
        t0 = perf()
        await call()
        latencies.append((perf() - t0) * 1000)
    if sample is not None:
        sample.cpu_s += time.process_time() - cpu0


@dataclass
class Arm:
    name: str
    label: str
    call: Call
    # Entries in the agent's rpm log: what a settle or a prune may have to walk.
    log_size: Callable[[], Awaitable[int]] | None = None
    # Redis arms: the same executions (same keys) on a client that counts what it sends, run
    # apart from the timed rounds so that counting costs them nothing.
    counted: Call | None = None
    counts: Callable[[], Counter[str]] | None = None

    @property
    def target_ms(self) -> float | None:
        return TARGETS_MS.get(self.name.rstrip("+"))


@dataclass
class Bench:
    arms: list[Arm]
    deployments_used: Counter[int] = field(default_factory=Counter)
    upstream_calls: int = 0


@contextlib.asynccontextmanager
async def build_arms(
    base_url: str, tmp: Path, redis_url: str | None, fixes: list[str]
) -> AsyncIterator[Bench]:
    """The arms, sharing one ProviderRouter (one keep-alive connection to fakellm); closes and
    cleans up (Redis keys included) on the way out."""
    import redis.asyncio as aioredis

    from agents.events import CompositeEvents
    from agents.executions.recording import FileJournal, RedisJournal
    from agents.metrics import MetricsEvents
    from agents.runtime.clock import SystemClock
    from agents.runtime.executor import Executor
    from agents.runtime.memory import MemoryState
    from agents.runtime.providers.registry import ProviderRouter
    from agents.runtime.redis_state import RedisState
    from agents.runtime.redis_wire import RedisWire
    from agents.runtime.types import ChatRequest, ExecutionRequest, ExecutionStatus, Message

    clock = SystemClock()
    config = build_config(base_url)
    router = ProviderRouter(clock=clock)
    events = CompositeEvents(MetricsEvents())
    system = Message("system", SYSTEM_PROMPT)
    user = (Message("user", USER_TEXT),)
    direct_deployment = config.deployments(MODEL)[0]
    bench = Bench([])
    rpm_key = f"rpm:agent:{AGENT}"

    async def direct() -> None:
        request = ChatRequest(
            model=direct_deployment.upstream_model, messages=(system, *user), max_tokens=MAX_TOKENS
        )
        response = await router.chat(direct_deployment, request, timeout_s=TIMEOUT_S)
        bench.upstream_calls += 1
        if not response.content:
            raise RuntimeError("direct call: empty answer")

    def executor(state: Any, records: Any) -> Call:
        runner = Executor(
            config=config,
            state=state,
            providers=router,
            clock=clock,
            records=records,
            events=events,
        )

        async def call() -> None:
            result = await runner.execute(
                ExecutionRequest(agent=AGENT, messages=user, execution_id=str(uuid.uuid4()))
            )
            bench.upstream_calls += result.attempts
            if (
                result.status != ExecutionStatus.SUCCEEDED
                or result.attempts != 1
                or result.fallback_used
            ):
                raise RuntimeError(f"execution did not succeed cleanly: {result.as_dict()}")
            assert result.deployment is not None
            bench.deployments_used[result.deployment] += 1

        return call

    def embedded(name: str, label: str, state: Any) -> Arm:
        journal = FileJournal(tmp / f"journal-{name.rstrip('+') + ('-w' if '+' in name else '')}")
        journals.append(journal)

        async def log_size() -> int:
            log = state._logs.get(rpm_key)  # a peek, for the report only
            return len(log.entries) if log is not None else 0

        return Arm(name, label, executor(state, journal), log_size)

    journals: list[Any] = []
    clients: list[Any] = []
    wires: list[Any] = []
    prefixes: list[str] = []

    async def redis(name: str, label: str, on_redis_py: bool) -> Arm:
        assert redis_url is not None
        prefix = f"{RUN_PREFIX}:{name}"
        prefixes.append(prefix)
        client = aioredis.Redis.from_url(redis_url)  # for the report's peeks and the clean-up
        clients.append(client)
        await client.ping()
        if on_redis_py:
            counting_class, client_counts = counting_connection_class()
            measured: Any = aioredis.Redis.from_url(redis_url)
            counting: Any = aioredis.Redis(
                connection_pool=aioredis.ConnectionPool.from_url(
                    redis_url, connection_class=counting_class
                )
            )
            clients.extend((measured, counting))
        else:
            measured = RedisWire(redis_url, client_name=None)
            counting, client_counts = counting_wire(redis_url)
            wires.extend((measured, counting))

        def parts(on: Any) -> tuple[Any, Any]:
            return RedisState(on, prefix=prefix), RedisJournal(on, stream=f"{prefix}:journal")

        async def log_size() -> int:
            return int(await client.zcard(f"{prefix}:rl:{rpm_key}"))

        return Arm(
            name,
            label,
            executor(*parts(measured)),
            log_size,
            counted=executor(*parts(counting)),
            counts=lambda: Counter(client_counts),
        )

    try:
        bench.arms.append(Arm("direct", "direct provider call", direct))
        bench.arms.append(
            embedded(
                "embedded", "executor, embedded (MemoryState + FileJournal)", MemoryState(clock)
            )
        )
        if redis_url is not None:
            bench.arms.append(
                await redis(
                    "redis", "executor, Redis (RedisState + RedisJournal, RedisWire)", False
                )
            )
            if "redis-py" in fixes:
                bench.arms.append(
                    await redis("redis-py", "executor, Redis, on redis-py's asyncio client", True)
                )
        yield bench
    finally:
        for journal in journals:
            journal.close()
        await router.close()
        for wire in wires:
            await wire.aclose()
        if clients:
            with contextlib.suppress(Exception):
                for prefix in prefixes:
                    keys = [k async for k in clients[0].scan_iter(match=f"{prefix}:*", count=1000)]
                    for i in range(0, len(keys), 500):
                        await clients[0].delete(*keys[i : i + 500])
        for client in clients:
            await client.aclose()


def rotate(items: list[Arm], k: int) -> list[Arm]:
    k %= len(items)
    return items[k:] + items[:k]


async def run_rounds(
    args: argparse.Namespace, base_url: str, tmp: Path, redis_url: str | None
) -> dict[str, Any]:
    import redis.asyncio as aioredis

    rounds: list[dict[str, Sample]] = []
    log_sizes: list[dict[str, int]] = []
    async with build_arms(base_url, tmp, redis_url, args.what_if) as bench:
        arms = bench.arms
        # Warm-up: connections, script loading (NOSCRIPT -> SCRIPT LOAD), caches, branch paths.
        for arm in arms:
            await timed_chunk(arm.call, args.warmup, None)
        info = aioredis.Redis.from_url(redis_url) if redis_url is not None else None
        try:
            stats0 = command_stats(await info.info("commandstats")) if info is not None else {}
            calls0 = bench.upstream_calls
            fake0 = fakellm_total(base_url)
            chunks = max(1, args.n // args.chunk)
            sizes = [args.n // chunks + (1 if i < args.n % chunks else 0) for i in range(chunks)]
            for r in range(args.rounds):
                gc.collect()
                samples = {arm.name: Sample() for arm in arms}
                for c, size in enumerate(sizes):
                    for arm in rotate(arms, r + c):
                        await timed_chunk(arm.call, size, samples[arm.name])
                rounds.append(samples)
                log_sizes.append({a.name: await a.log_size() for a in arms if a.log_size})
                print(_round_line(r, samples, log_sizes[-1]), file=sys.stderr, flush=True)
            stats1 = command_stats(await info.info("commandstats")) if info is not None else {}
        finally:
            if info is not None:
                await info.aclose()
        server_counts = {
            k: (v[0] - stats0.get(k, (0, 0.0))[0], v[1] - stats0.get(k, (0, 0.0))[1])
            for k, v in stats1.items()
        }
        # Round trips, counted on the client in a pass of its own, after the rounds.
        client_counts: dict[str, dict[str, float]] = {}
        for arm in arms:
            if arm.counted is None or arm.counts is None:
                continue
            await timed_chunk(arm.counted, 20, None)  # connect (HELLO, CLIENT SETINFO...)
            before = arm.counts()
            await timed_chunk(arm.counted, args.count_n, None)
            after = arm.counts()
            client_counts[arm.name] = {
                k: (v - before.get(k, 0)) / args.count_n
                for k, v in sorted(after.items())
                if v - before.get(k, 0)
            }
        upstream = bench.upstream_calls - calls0
        fake_delta = fakellm_total(base_url) - fake0
        # fakellm does not count admin calls (the stats requests), so the two must match.
        if fake_delta != upstream:
            raise RuntimeError(f"fakellm saw {fake_delta} calls, the arms made {upstream}")
        redis_arms = sum(1 for arm in arms if arm.counted is not None)
        return {
            "arms": [(arm.name, arm.label, arm.target_ms) for arm in arms],
            "rounds": rounds,
            "log_sizes": log_sizes,
            "measured_redis": args.n * args.rounds * redis_arms,
            "client_counts": client_counts,
            "server_counts": server_counts,
            "deployments": dict(bench.deployments_used),
            "upstream": upstream,
        }


def _round_line(r: int, samples: dict[str, Sample], log_sizes: dict[str, int]) -> str:
    parts = [
        f"{name} p50 {s.p(0.5):.3f} p99 {s.p(0.99):.3f} cpu {s.cpu_ms:.3f}"
        for name, s in samples.items()
    ]
    logs = ", ".join(f"{k} {v}" for k, v in log_sizes.items())
    return f"round {r + 1}: " + " | ".join(parts) + f" (ms); rpm log entries: {logs}"


# --- report --------------------------------------------------------------------------------------


def _spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return fmt.format(statistics.median(values)) + (
        f" ({fmt.format(min(values))}-{fmt.format(max(values))})" if len(values) > 1 else ""
    )


def report(result: dict[str, Any], args: argparse.Namespace, load: tuple[float, float]) -> str:
    rounds: list[dict[str, Sample]] = result["rounds"]
    lines = [
        f"{args.n} sequential executions per arm per round after {args.warmup} warm-up, "
        f"{args.rounds} rounds, arms interleaved in chunks of {args.chunk}; "
        "median over rounds (min-max across rounds). Latency in ms, CPU in ms per execution "
        "(this process). Added = arm minus direct, per round.",
        "",
        "| arm | p50 | p99 | CPU | added p50 | added p99 | added CPU |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label, _ in result["arms"]:
        p50 = [s[name].p(0.5) for s in rounds]
        p99 = [s[name].p(0.99) for s in rounds]
        cpu = [s[name].cpu_ms for s in rounds]
        if name == "direct":
            added = ["—", "—", "—"]
        else:
            added = [
                _spread([s[name].p(0.5) - s["direct"].p(0.5) for s in rounds]),
                _spread([s[name].p(0.99) - s["direct"].p(0.99) for s in rounds]),
                _spread([s[name].cpu_ms - s["direct"].cpu_ms for s in rounds]),
            ]
        cells = [_spread(p50), _spread(p99), _spread(cpu), *added]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, _, target in result["arms"]:
        if target is not None:
            added_p50 = statistics.median(s[name].p(0.5) - s["direct"].p(0.5) for s in rounds)
            verdict = "met" if added_p50 <= target else "MISSED"
            lines.append(
                f"- target {name}: added p50 <= {target} ms: {added_p50:.3f} ms, {verdict}"
            )
    for name, counts in result["client_counts"].items():
        lines.append(
            f"- {name}: Redis traffic per execution, counted on the client over "
            f"{args.count_n} executions: " + ", ".join(f"{k} {v:.2f}" for k, v in counts.items())
        )
    n_redis = result["measured_redis"]
    if n_redis:
        server = {
            k: (calls / n_redis, usec / calls if calls else 0.0)
            for k, (calls, usec) in sorted(result["server_counts"].items())
            if calls >= n_redis // 10
        }
        lines.append(
            "- Redis server INFO commandstats per execution of the Redis arms (server-wide: "
            "other clients count too; µs per call): "
            + ", ".join(f"{k} {c:.2f} ({u:.1f} µs)" for k, (c, u) in server.items())
        )
    lines.append(
        f"- checks: {result['upstream']} upstream calls = fakellm's count; deployments used "
        f"{dict(sorted(result['deployments'].items()))}; every execution succeeded at attempt 1"
    )
    lines.append(
        "- agent rpm log entries at the end of each round: "
        + "; ".join(
            ", ".join(f"{k} {v}" for k, v in sizes.items()) for sizes in result["log_sizes"]
        )
    )
    lines.append(f"- 1-min load average before/after: {load[0]:.2f} / {load[1]:.2f}")
    return "\n".join(lines)


# --- profile -------------------------------------------------------------------------------------


async def profile(args: argparse.Namespace, base_url: str, tmp: Path, redis_url: str | None) -> str:
    async with build_arms(base_url, tmp, redis_url, args.what_if) as bench:
        arm = next((a for a in bench.arms if a.name == args.profile), None)
        if arm is None:
            raise SystemExit(f"no arm {args.profile!r} in this run (see --what-if, --no-redis)")
        await timed_chunk(arm.call, args.warmup, None)
        try:
            from pyinstrument import Profiler  # investigation only; not a project dependency
        except ImportError:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            await timed_chunk(arm.call, args.n, None)
            prof.disable()
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(40)
            return out.getvalue()
        profiler = Profiler(interval=0.0001, async_mode="disabled")
        profiler.start()
        await timed_chunk(arm.call, args.n, None)
        profiler.stop()
        text: str = profiler.output_text(unicode=True, color=False, show_all=False)
        return text


# --- main ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def django_env(tmp: Path) -> Iterator[None]:
    """Django set up for the journal and metrics classes: embedded settings, a temp var dir."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "console.settings"
    os.environ["BREAKWATER_VAR_DIR"] = str(tmp)
    for name in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR", "DEBUG"):
        os.environ.pop(name, None)
    import django

    django.setup()
    yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=2000, help="executions per arm per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=500, help="per arm, before round 1")
    parser.add_argument("--chunk", type=int, default=250, help="interleaving granularity")
    parser.add_argument(
        "--redis-url",
        default=None,
        help="measure against this Redis (default: a private redis-server started for the run, "
        "so that its command statistics count this run only; else $REDIS_URL)",
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis arms")
    parser.add_argument(
        "--count-n", type=int, default=500, help="executions of the round-trip counting pass"
    )
    parser.add_argument(
        "--what-if",
        action="append",
        choices=WHAT_IFS,
        default=[],
        help="add an arm with this proposed fix applied (repeatable; bench-only subclasses)",
    )
    parser.add_argument(
        "--profile",
        choices=("direct", "embedded", "redis", "redis-py"),
        help="profile one arm (pyinstrument if installed, else cProfile) instead of measuring",
    )
    parser.add_argument("--max-seconds", type=int, default=300, help="hard bound on the run")
    args = parser.parse_args(argv)
    if not (
        1 <= args.rounds <= 20
        and 100 <= args.n <= 100_000
        and 10 <= args.warmup <= 20_000
        and 10 <= args.chunk <= args.n
        and 10 <= args.count_n <= 100_000
    ):
        parser.error(
            "--rounds 1..20, --n 100..100000, --warmup 10..20000, --chunk 10..n, "
            "--count-n 10..100000"
        )
    redis_url: str | None = None

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    signal.signal(signal.SIGALRM, _term)
    signal.alarm(args.max_seconds)

    import uvloop

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-runtime-"))
    fake = own_redis = None
    try:
        if not args.no_redis:
            redis_url = args.redis_url
            if redis_url is None and shutil.which("redis-server"):
                own_redis, redis_url = start_redis(tmp)
            redis_url = redis_url or os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        with django_env(tmp):
            fake, base_url = start_fakellm()
            if args.profile:
                print(uvloop.run(profile(args, base_url, tmp, redis_url)))
                return 0
            result = uvloop.run(run_rounds(args, base_url, tmp, redis_url))
    finally:
        signal.alarm(0)
        if fake is not None:
            kill_group(fake)
        if own_redis is not None:
            kill_group(own_redis)
        elif redis_url is not None:
            delete_keys(redis_url)
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(result, args, (load_before, os.getloadavg()[0])))
    print(f"- safeguards on: {_safeguards()}")
    print(f"- {common.provenance(('agents/',))}")
    print(f"- {_versions()}; {os.cpu_count()} CPUs; wall time {time.monotonic() - started:.0f} s")
    return 0


def delete_keys(redis_url: str) -> None:
    """Remove whatever this run left in Redis (normally nothing: the arms clean up)."""
    import redis

    with contextlib.suppress(Exception), redis.Redis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{RUN_PREFIX}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])


def _safeguards() -> str:
    from agents.runtime import types
    from agents.runtime.redis_state import RedisState

    on = "agent breaker, rpm + tpm limits, 2 deployments (leases), fallback model, max_retries 2"
    if getattr(types, "BudgetRule", None) is None:
        return on + "; no budgets in this runtime"
    on += ", budgets (global + agent, daily)"
    if not hasattr(RedisState, "budget_reserve"):
        on += " (RedisState has no budget support in this tree: its arms reserve none)"
    return on


def _versions() -> str:
    import platform
    from importlib.metadata import version

    parts = [f"Python {platform.python_version()}"]
    for dist in ("uvloop", "aiohttp", "redis", "hiredis", "Django"):
        with contextlib.suppress(Exception):
            parts.append(f"{dist} {version(dist)}")
    return ", ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
