"""The fault scenarios. Each one builds its own deployment, injects one fault, measures, and
returns a :class:`~bench.chaos.report.Result`; sizes are parameters, so that ``make chaos``
runs the full sizes and ``tests/chaos/`` the quick ones (:data:`QUICK`).

Prices are chosen so that a call's cost is exact and its worst case equals its cost: input is
free, output is priced, every agent's ``max_tokens`` is 16 and fakellm answers 16 words, so each
successful call costs 16 x the output price (``$0.001`` at the default $62.5 per million).
Breakers are set far out of reach: the faults measured here are not the upstream's, and an
opening breaker would hide them behind degraded answers.

Method, and what each figure means: docs/RELIABILITY.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import random
import signal
import statistics
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos import observe
from bench.chaos.load import (
    SLOW_KINDS,
    Answer,
    Call,
    Client,
    Disconnect,
    Slow,
    body_for,
    closed_loop,
    disconnect_after,
    door_path,
    open_loop,
    raw_head,
    slow_client,
)
from bench.chaos.report import RECOVERY_TARGET_S, Result
from bench.chaos.stack import (
    FakeLLM,
    HarnessError,
    Stack,
    deployment,
    postgres_base,
    wait_until,
)

OUTPUT_TOKENS = 16
DEFAULT_PRICE = 62.5  # $/M output tokens: $0.001 per call
STALL_ANSWER_S = 0.5  # a refusal during a Redis outage: the 250 ms command timeout + 250 ms slack
SETTLE_S = 60.0  # "stuck after 60 s": the bound the issue sets for settling a dead process's work
LENIENT_BREAKER = {
    "failure_threshold": 10_000,
    "window_size": 1000,
    "minimum_calls": 1000,
    "failure_rate_threshold": 1.0,
}


# --- config --------------------------------------------------------------------------------------


def config(
    fake: FakeLLM,
    agents: list[dict[str, Any]],
    *,
    price: float = DEFAULT_PRICE,
    max_concurrency: int = 1000,
    budgets: list[dict[str, Any]] | None = None,
) -> str:
    """Config as code (docs/INTERFACES.md §2): one fakellm provider, one model, the agents."""
    defaults = {
        "model": "m",
        "timeout_s": 20,
        "max_retries": 0,
        "max_tokens": OUTPUT_TOKENS,
        "breaker": LENIENT_BREAKER,
    }
    document = {
        "providers": [{"name": "fake", "kind": "openai", "base_url": f"{fake.url}/v1"}],
        "models": [
            {
                "name": "m",
                "provider": "fake",
                "upstream_model": "fake-1",
                "input_usd_per_mtok": 0,
                "output_usd_per_mtok": price,
                "max_concurrency": max_concurrency,
            }
        ],
        "agents": [{**defaults, **agent} for agent in agents],
        "budgets": budgets
        if budgets is not None
        else [{"scope": "global", "daily_limit_usd": 100}],
    }
    return json.dumps(document, indent=2)  # JSON is YAML


def call_cost(price: float = DEFAULT_PRICE) -> float:
    return OUTPUT_TOKENS * price / 1e6


# --- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def timed(result: Result) -> Iterator[None]:
    """Time the scenario. What stops it from running (a HarnessError, or a bug here) becomes the
    result's error, not a missed figure, and the other scenarios still run."""
    started = time.monotonic()
    try:
        yield
    except HarnessError as exc:
        result.error = str(exc)
    except Exception as exc:  # the table must still come out, with this scenario marked
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"
    finally:
        result.wall_s = time.monotonic() - started


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _kinds(answers: list[Answer]) -> str:
    counts = Counter(a.kind() for a in answers)
    return ", ".join(f"{n} x {kind}" for kind, n in counts.most_common())


def stuck_figure(result: Result, stack: Stack, settle_s: float, since: str) -> None:
    """``stuck_60s``: executions not settled ``settle_s`` after the fault (a target only when
    the wait is the full 60 s)."""
    n = observe.running(stack)
    if settle_s >= SETTLE_S:
        result.add("stuck_60s", f"rows running 60 s after {since}", n)
    else:
        result.add("stuck", f"rows running {settle_s:g} s after {since}", n, target="")


def held_figures(result: Result, stack: Stack, when: str) -> None:
    held = observe.held(stack)
    result.add("leases_held", f"leases held {when}", held.leases)
    result.add("reserved_held", f"reserved held {when}", held.reserved_usd, unit="$")
    result.note(f"held {when}: {held.note()}")


def money_figures(result: Result, stack: Stack) -> None:
    over, note = observe.overspend(stack)
    result.add("overspend_usd", "overspend (ledger over limit)", over, unit="$")
    result.note(f"ledger vs limits: {note}")


def lost_figure(
    result: Result, stack: Stack, answers: list[Answer], fault_at: float | None = None
) -> None:
    """``lost``: executions whose id a client was answered with and that have no row."""
    ids = {a.execution_id for a in answers if a.execution_id}
    missing = observe.missing_rows(stack, {i for i in ids if i})
    result.add("lost", "accepted executions with no row", len(missing))
    note = f"{len(ids)} executions accepted (an id answered), {len(missing)} without a row"
    if missing and fault_at is not None:
        gone = [a for a in answers if a.execution_id in missing]
        before = sum(1 for a in gone if a.done < fault_at)
        note += (
            f" ({before} answered before the fault struck, {len(gone) - before} after it: "
            f"answered at {', '.join(f'{a.done - fault_at:+.2f} s' for a in gone[:10])} "
            "from the fault, with a success status)"
            if all(a.success for a in gone)
            else f" ({before} answered before the fault struck, {len(gone) - before} after it)"
        )
    result.note(note)


def _nothing_held(stack: Stack) -> bool:
    held = observe.held(stack)
    return held.leases == 0 and held.reserved_usd == 0


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def poll_until(
    deadline: float, check: Callable[[], bool], every_s: float = 1.0
) -> float | None:
    """Call ``check`` (in a thread) until it is true or ``deadline``; when it became true."""
    while True:
        with contextlib.suppress(OSError, ValueError):
            if await asyncio.to_thread(check):
                return time.monotonic()
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(every_s)


# --- 1. SIGKILL of serve with executions in flight -----------------------------------------------


def kill_in_flight(
    tmp: Path,
    *,
    mode: str,
    in_flight: int = 200,
    latency_ms: float = 45_000,
    settle_s: float = SETTLE_S,
    celery: bool = True,
) -> Result:
    """``in_flight`` executions wait on a slow upstream; ``serve`` is SIGKILLed, then restarted.
    ``settle_s`` later: rows still running, leases and reservations still held, upstream calls
    made that no ledger entry charges, and overspend."""
    result = Result(f"kill-{mode}", f"SIGKILL of serve, {in_flight} in flight ({mode})")
    with timed(result):
        fake = FakeLLM(tmp, latency_ms=latency_ms)
        agents = [{"name": "patient", "timeout_s": 60, "daily_budget_usd": 10}]
        cfg = config(fake, agents)
        with deployment(tmp, hint="kill", mode=mode, config=cfg, fake=fake, celery=celery) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_kill(stack, fake, key, result, in_flight, settle_s))
    return result


async def _kill(
    stack: Stack, fake: FakeLLM, key: str, result: Result, n: int, settle_s: float
) -> None:
    await asyncio.to_thread(fake.reset)
    async with Client(stack.url, timeout_s=120) as client:
        doors = ("execute", "v1")
        tasks = [
            asyncio.create_task(client.send(Call(doors[i % 2], "patient", key))) for i in range(n)
        ]
        reached = await asyncio.to_thread(
            wait_until, lambda: fake.in_flight() >= n, timeout_s=60, every_s=0.2
        )
        if not reached:
            raise HarnessError(f"only {fake.in_flight()} of {n} calls reached fakellm in 60 s")
        upstream = await asyncio.to_thread(fake.calls)
        killed = time.monotonic()
        await asyncio.to_thread(stack.kill_serve, signal.SIGKILL)
        answers = await asyncio.gather(*tasks)
    answered = sum(1 for a in answers if a.status is not None)
    await asyncio.to_thread(stack.start_serve)
    restarted = time.monotonic() - killed

    def settled() -> bool:
        return observe.running(stack) == 0 and _nothing_held(stack)

    at = await poll_until(killed + settle_s, settled, every_s=2.0)
    await sleep_until(killed + settle_s)
    stuck_figure(result, stack, settle_s, "the kill")
    held_figures(result, stack, f"{settle_s:g} s after the kill")
    rows = observe.executions(stack)
    n_charged, charged_usd = observe.charged(stack)
    result.add("lost", "upstream calls with no execution row", max(0, upstream - rows))
    result.add("uncharged", "upstream calls charged nowhere", max(0, upstream - n_charged))
    money_figures(result, stack)
    result.add(
        "settled_s",
        "all settled after (s)",
        None if at is None else round(at - killed, 1),
        target="",
        unit="s",
    )
    result.note(
        f"{upstream} upstream calls in flight at the kill; {answered} clients got an HTTP answer; "
        f"serve back after {restarted:.1f} s; rows by status {observe.status_counts(stack)}; "
        f"{n_charged} ledger entries, ${charged_usd:.4f}"
    )


# --- 2. Redis stopped (SIGSTOP), then continued --------------------------------------------------


def _two_agents(budget: float) -> list[dict[str, Any]]:
    return [
        {"name": "capped", "daily_budget_usd": budget},
        {"name": "free"},
    ]


def _pick(key: str) -> Callable[[int], Call]:
    """Half to the capped agent, half to the free one; REST and /v1 alternating."""

    def pick(i: int) -> Call:
        agent = "capped" if i % 2 else "free"
        door = "execute" if (i // 2) % 2 == 0 else "v1"
        return Call(door, agent, key)

    return pick


def _outage_answers(
    result: Result, answers: list[Answer], start: float, end: float, what: str
) -> None:
    """Answers to the requests sent during an outage of the shared state (from 0.5 s after it
    began, so that the requests already past admission are left out): each must be a typed 503
    in the door's format within STALL_ANSWER_S, or a normal answer (a success, or a refusal
    such as an exhausted budget's) given once it is over."""
    during = [a for a in answers if start + 0.5 <= a.sent < end]
    bad = [
        a
        for a in during
        if not (a.typed_error() and a.latency_s <= STALL_ANSWER_S)
        and not (a.done >= end and a.status is not None and a.status < 500)
    ]
    result.add(
        "bad_outage_answers",
        f"untyped or slow (> {STALL_ANSWER_S:g} s) answers during the {what}",
        len(bad),
    )
    plain = sum(1 for a in during if a.status and a.status >= 500 and "json" not in a.content_type)
    result.add("plain_5xx", f"non-JSON 5xx during the {what}", plain, target="")
    latencies = [a.latency_s for a in during]
    for label, q in (("p50", 0.5), ("max", 1.0)):
        value = _pct(latencies, q)
        result.add(
            f"outage_{label}_s",
            f"{label} answer time during the {what} (s)",
            None if value is None else round(value, 3),
            target="",
            unit="s",
        )
    result.note(f"{len(during)} requests sent during the {what}: {_kinds(during)}")


def _recovery(answers: list[Answer], back: float, agents: tuple[str, ...]) -> tuple[float, str]:
    """Seconds from ``back`` to the first success of each agent among the requests sent after
    it; the worst of them (infinite: none succeeded)."""
    worst = 0.0
    parts = []
    for agent in agents:
        done = [a.done for a in answers if a.call.agent == agent and a.sent >= back and a.success]
        first = min(done) - back if done else float("inf")
        parts.append(f"{agent} {first:.2f} s" if done else f"{agent}: no success")
        worst = max(worst, first)
    return worst, ", ".join(parts)


def redis_stall(
    tmp: Path,
    *,
    rate: float = 40.0,
    before_s: float = 10.0,
    stall_s: float = 30.0,
    after_s: float = 25.0,
    budget_calls: int = 600,
    settle_s: float = SETTLE_S,
    celery: bool = True,
) -> Result:
    """Redis SIGSTOPped for ``stall_s`` under ``rate`` requests/s, then continued.

    Two agents share the traffic: ``capped`` under a daily budget of ``budget_calls`` calls (its
    part of the traffic before the stall plus about 20 s after it), ``free`` with none."""
    result = Result("redis-stall", f"Redis stopped {stall_s:g} s at {rate:g} req/s")
    with timed(result):
        fake = FakeLLM(tmp, latency_ms=50)
        cfg = config(fake, _two_agents(budget_calls * call_cost()))
        with deployment(
            tmp, hint="stall", mode="distributed", config=cfg, fake=fake, celery=celery
        ) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_stall(stack, key, result, rate, before_s, stall_s, after_s, settle_s))
    return result


async def _stall(
    stack: Stack,
    key: str,
    result: Result,
    rate: float,
    before_s: float,
    stall_s: float,
    after_s: float,
    settle_s: float,
) -> None:
    assert stack.redis is not None
    async with Client(stack.url, timeout_s=30) as client:
        load = asyncio.create_task(
            open_loop(client, _pick(key), rate=rate, duration_s=before_s + stall_s + after_s)
        )
        await asyncio.sleep(before_s)
        stopped = time.monotonic()
        stack.redis.pause()
        try:
            await sleep_until(stopped + stall_s)
        finally:
            stack.redis.resume()
        back = time.monotonic()
        answers = await load
    await asyncio.sleep(2)  # every caller has its answer: nothing may stay reserved for them
    await asyncio.to_thread(held_figures, result, stack, "once every caller was answered")
    _outage_answers(result, answers, stopped, back, "stall")
    worst, note = _recovery(answers, back, ("free", "capped"))
    result.add(
        "recovery_s",
        "first success after Redis returned (s)",
        worst,
        f"< {RECOVERY_TARGET_S:g}",
        "s",
    )
    result.note(f"recovery: {note}")
    await sleep_until(back + settle_s)
    await asyncio.to_thread(
        _after_outage, result, stack, answers, settle_s, "Redis returned", stopped
    )


def _after_outage(
    result: Result,
    stack: Stack,
    answers: list[Answer],
    settle_s: float,
    since: str,
    fault_at: float,
) -> None:
    stuck_figure(result, stack, settle_s, since)
    money_figures(result, stack)
    lost_figure(result, stack, answers, fault_at)
    kinds = observe.incidents(stack)
    # A target in the full-length run only: what opens it may run on a schedule (the reaper and
    # the detectors run every 60 s), which the quick runs do not wait for.
    target = ">= 1" if settle_s >= SETTLE_S else ""
    result.add("incidents", "incidents opened", sum(kinds.values()), target=target)
    result.note(
        f"incidents by kind: {kinds or 'none'}; rows by status {observe.status_counts(stack)}"
    )


# --- 2b. Redis restarted empty -------------------------------------------------------------------


def redis_restart_empty(
    tmp: Path,
    *,
    rate: float = 40.0,
    before_s: float = 15.0,
    down_s: float = 3.0,
    after_s: float = 20.0,
    budget_calls: int = 250,
    settle_s: float = SETTLE_S,
    celery: bool = True,
) -> Result:
    """Redis SIGKILLed under traffic (no persistence: its data is gone) and started again empty
    on the same port. The capped agent's daily budget (``budget_calls`` calls) is used up before
    the kill, so every dollar it is charged after the restart is overspend."""
    result = Result("redis-empty", f"Redis restarted empty at {rate:g} req/s")
    with timed(result):
        fake = FakeLLM(tmp, latency_ms=50)
        cfg = config(fake, _two_agents(budget_calls * call_cost()))
        with deployment(
            tmp, hint="empty", mode="distributed", config=cfg, fake=fake, celery=celery
        ) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_empty(stack, key, result, rate, before_s, down_s, after_s, settle_s))
    return result


async def _empty(
    stack: Stack,
    key: str,
    result: Result,
    rate: float,
    before_s: float,
    down_s: float,
    after_s: float,
    settle_s: float,
) -> None:
    assert stack.redis is not None
    async with Client(stack.url, timeout_s=30) as client:
        load = asyncio.create_task(
            open_loop(client, _pick(key), rate=rate, duration_s=before_s + down_s + after_s)
        )
        await asyncio.sleep(before_s)
        killed = time.monotonic()
        await asyncio.to_thread(stack.redis.kill)
        await sleep_until(killed + down_s)
        await asyncio.to_thread(stack.redis.start)
        back = time.monotonic()
        answers = await load
    await asyncio.sleep(2)
    await asyncio.to_thread(held_figures, result, stack, "once every caller was answered")
    _outage_answers(result, answers, killed, back, "outage")
    worst, note = _recovery(answers, back, ("free",))
    result.add(
        "recovery_s",
        "first success after Redis returned (s)",
        worst,
        f"< {RECOVERY_TARGET_S:g}",
        "s",
    )
    capped_ok = [a for a in answers if a.call.agent == "capped" and a.success]
    result.note(
        f"recovery: {note}; capped successes {sum(1 for a in capped_ok if a.sent < killed)} "
        f"before the kill, {sum(1 for a in capped_ok if a.sent >= back)} after the restart"
    )
    await sleep_until(back + settle_s)
    await asyncio.to_thread(
        _after_outage, result, stack, answers, settle_s, "Redis returned", killed
    )


# --- 3. PostgreSQL refusing connections ----------------------------------------------------------


def postgres_refusing(
    tmp: Path,
    *,
    rate: float = 20.0,
    before_s: float = 5.0,
    outage_s: float = 20.0,
    after_s: float = 10.0,
    settle_s: float = SETTLE_S,
    celery: bool = True,
) -> Result:
    """The deployment's database refuses connections for ``outage_s`` (``ALLOW_CONNECTIONS
    false`` and its sessions terminated) under traffic. The hot path needs no database: every
    request must still be answered, and every accepted execution must have its row and its
    ledger entry once the database is back."""
    result = Result("pg-refusing", f"PostgreSQL refusing {outage_s:g} s at {rate:g} req/s")
    with timed(result):
        fake = FakeLLM(tmp, latency_ms=50)
        cfg = config(fake, [{"name": "free", "daily_budget_usd": 100}])
        if postgres_base() is None:
            raise HarnessError("needs PostgreSQL (set DATABASE_URL or CHAOS_DATABASE_URL)")
        with deployment(
            tmp, hint="pg", mode="distributed", config=cfg, fake=fake, celery=celery
        ) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_pg(stack, key, result, rate, before_s, outage_s, after_s, settle_s))
    return result


async def _pg(
    stack: Stack,
    key: str,
    result: Result,
    rate: float,
    before_s: float,
    outage_s: float,
    after_s: float,
    settle_s: float,
) -> None:
    def pick(i: int) -> Call:
        return Call("execute" if i % 2 else "v1", "free", key)

    async with Client(stack.url, timeout_s=30) as client:
        load = asyncio.create_task(
            open_loop(client, pick, rate=rate, duration_s=before_s + outage_s + after_s)
        )
        await asyncio.sleep(before_s)
        down = time.monotonic()
        await asyncio.to_thread(stack.db.refuse_connections)
        try:
            await sleep_until(down + outage_s)
        finally:
            await asyncio.to_thread(stack.db.allow_connections)
        back = time.monotonic()
        answers = await load
    during = [a for a in answers if down <= a.sent < back]
    failed = [a for a in during if not a.success]
    result.add("outage_failed", "requests not served during the outage", len(failed))
    result.add(
        "outage_5xx", "5xx during the outage", sum(1 for a in during if (a.status or 0) >= 500), ""
    )
    worst = _pct([a.latency_s for a in during], 1.0)
    result.add(
        "outage_max_s",
        "max answer time during the outage (s)",
        None if worst is None else round(worst, 3),
        target="",
        unit="s",
    )
    result.note(f"{len(during)} requests during the outage: {_kinds(during)}")
    ids = {a.execution_id for a in answers if a.execution_id}
    ids_ok = {a.execution_id for a in answers if a.success and a.execution_id}

    def complete() -> bool:
        return not observe.missing_rows(stack, {i for i in ids if i})

    at = await poll_until(back + settle_s, complete, every_s=1.0)
    result.add(
        "drained_s",
        "every accepted row stored after (s)",
        None if at is None else round(at - back, 1),
        target="",
        unit="s",
    )
    await sleep_until(back + settle_s)

    def measure() -> None:
        lost_figure(result, stack, answers)
        ledger = {
            str(v).replace("-", "")
            for (v,) in stack.db.query("SELECT execution_id FROM budgets_spendentry")
        }
        unledgered = {i for i in ids_ok if i and i.replace("-", "") not in ledger}
        result.add("unledgered", "successes with no ledger entry", len(unledgered))
        stuck_figure(result, stack, settle_s, "the database returned")

    await asyncio.to_thread(measure)


# --- 4. Clients that disconnect mid-response -----------------------------------------------------


def disconnects(
    tmp: Path,
    *,
    clients: int = 3000,
    concurrency: int = 150,
    settle_s: float = SETTLE_S,
    seed: int = 1,
    celery: bool = True,
) -> Result:
    """``clients`` requests on the REST door, /v1 and /v1 streaming, each closed by its client
    (FIN or RST) during its admission or its completion, against a fakellm that answers after
    150 +- 10 ms (streams: then 16 words 15 ms apart); see :func:`_disconnects`."""
    result = Result("disconnects", f"{clients:,} client disconnects mid-response")
    with timed(result):
        fake = FakeLLM(tmp, latency_ms=150, jitter_ms=10, token_ms=15)
        # Capacity far above the run, so that what leaks is counted whole (at 1,000 it fills up,
        # and the rest of the run is refused instead).
        cfg = config(fake, [{"name": "d", "daily_budget_usd": 100}], max_concurrency=100_000)
        with deployment(
            tmp, hint="disc", mode="distributed", config=cfg, fake=fake, celery=celery
        ) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_disconnects(stack, key, result, clients, concurrency, settle_s, seed))
    return result


async def _disconnects(
    stack: Stack,
    key: str,
    result: Result,
    clients: int,
    concurrency: int,
    settle_s: float,
    seed: int,
) -> None:
    rng = random.Random(seed)
    doors = ("execute", "v1", "v1-stream")
    # Where each client closes. The windows where a disconnect loses something are short (a
    # Redis round trip while the execution is admitted, or while it completes and journals its
    # end), so the closes are aimed at them rather than spread evenly:
    # - a third close 0-5 ms after sending (during the admission);
    # - on the REST door and /v1, the rest close between 0.85 and 1.02 x the current typical
    #   answer time (the completion). Every tenth client is a control that reads its whole
    #   answer; the median of the last 50 per door is "typical", so the aim follows the
    #   machine's load;
    # - on /v1 streaming, the rest close after 15, 16 or 17 of its events: the role chunk and
    #   16 words come first, and the execution completes and journals its end right after the
    #   last word, before the finish chunk.
    typical = {
        door: collections.deque([0.4 if door == "v1-stream" else 0.16], maxlen=50) for door in doors
    }
    plan = []
    for i in range(clients + clients // 9):
        door = doors[i % 3]
        body = body_for(door, "d", f"disconnect {i}")
        if door == "v1-stream":
            doc = json.loads(body)
            doc["stream_options"] = {"include_usage": True}
            body = json.dumps(doc).encode()
        head = raw_head("POST", door_path(door, "d"), key, stack.port, len(body))
        control = i % 10 == 9
        early = rng.random() < 1 / 3
        aim = rng.uniform(0, 0.005) if early else rng.uniform(0.85, 1.02)
        events = None if early or door != "v1-stream" else rng.randint(15, 17)
        plan.append((door, head + body, control, early, aim, events, rng.random() < 0.5))
    outcomes: list[Disconnect] = []
    controls = 0
    queue = list(reversed(plan))

    async def worker() -> None:
        nonlocal controls
        while queue:
            door, request, control, early, aim, events, reset = queue.pop()
            if control:
                began = time.monotonic()
                seen = await disconnect_after(stack.port, request, 30.0, reset=False)
                if seen.complete:
                    typical[door].append(time.monotonic() - began)
                controls += 1
                continue
            if early:
                after = aim
            elif events is not None:
                after = 30.0
            else:
                after = aim * statistics.median(typical[door])
            outcomes.append(
                await disconnect_after(stack.port, request, after, reset=reset, after_events=events)
            )

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    ended = time.monotonic()
    cut = [o for o in outcomes if not o.complete]
    result.note(
        f"{len(cut):,} of {len(outcomes):,} clients closed before the whole response "
        f"({sum(1 for o in cut if o.received):,} after part of it), "
        f"{len(outcomes) - len(cut):,} had it all first; {controls:,} controls read it all; "
        f"{sum(1 for o in outcomes if o.error):,} socket errors; typical answer times at the "
        "end: " + ", ".join(f"{d} {statistics.median(typical[d]) * 1000:.0f} ms" for d in doors)
    )
    # What a disconnected execution holds is released at once: allow the calls still on their
    # way to fakellm (at most 0.5 s) to end, then read.
    await poll_until(ended + 5, lambda: _nothing_held(stack), every_s=0.5)
    await asyncio.to_thread(held_figures, result, stack, "within 5 s of the last client")

    def clean() -> bool:
        return observe.running(stack) == 0

    await poll_until(ended + settle_s, clean, every_s=1.0)
    if settle_s >= SETTLE_S:
        await sleep_until(ended + settle_s)

    def measure() -> None:
        result.add(
            "running_no_ledger",
            "rows running with no ledger entry after the drain",
            observe.running_without_ledger(stack),
        )
        stuck_figure(result, stack, settle_s, "the last client")
        result.note(f"rows by status {observe.status_counts(stack)}")

    await asyncio.to_thread(measure)


# --- 5. Slow clients -----------------------------------------------------------------------------


def slow_clients(
    tmp: Path,
    *,
    clients: int = 300,
    timeout_s: float = 10.0,
    slack_s: float = 5.0,
    interval_s: float = 1.0,
) -> Result:
    """``clients`` connections that never finish their request: headers sent one line at a
    time and never ended, or a body announced (100,000 bytes) and then not sent or trickled, on
    the REST door, /v1 and a Django route. ``timeout_s + slack_s`` after the last one opened, how
    many are still open (target 0: a header and body read timeout of ``timeout_s``, 10 s by
    default); meanwhile ordinary requests must be served."""
    result = Result("slow-clients", f"{clients} slow clients")
    with timed(result):
        fake = FakeLLM(tmp)
        cfg = config(fake, [{"name": "s"}])
        with deployment(tmp, hint="slow", mode="embedded", config=cfg, fake=fake) as stack:
            key = stack.admin_key  # the traffic's key too: one key creation less
            asyncio.run(_slow(stack, key, result, clients, timeout_s + slack_s, interval_s))
    return result


async def _slow(
    stack: Stack, key: str, result: Result, n: int, hold_s: float, interval_s: float
) -> None:
    paths = (door_path("execute", "s"), door_path("v1", "s"), "/login/")
    slows = [Slow(SLOW_KINDS[i % 3], paths[(i // 3) % 3]) for i in range(n)]
    far = time.monotonic() + hold_s + 60
    tasks = []
    for slow in slows:
        tasks.append(
            asyncio.create_task(
                slow_client(slow, stack.port, key, interval_s=interval_s, until=far)
            )
        )
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.5)
    opened = max((s.opened for s in slows), default=time.monotonic())
    probes: list[Answer] = []
    async with Client(stack.url, timeout_s=10) as client:
        while time.monotonic() < opened + hold_s:
            batch = await asyncio.gather(
                client.get("/healthz"), client.send(Call("execute", "s", key))
            )
            probes.extend(batch)
            await asyncio.sleep(0.5)
    still = [s for s in slows if s.opened and s.closed is None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    result.add("still_open", f"slow connections still open after {hold_s:g} s", len(still))
    bad = [p for p in probes if not (p.success or (p.door == "get" and p.status == 200))]
    result.add("probe_failed", "ordinary requests not served meanwhile", len(bad))
    p99 = _pct([p.latency_s for p in probes], 0.99)
    result.add(
        "probe_p99_s",
        "p99 of ordinary requests meanwhile (s)",
        None if p99 is None else round(p99, 3),
        target="",
        unit="s",
    )
    per_kind = Counter(s.kind for s in still)
    closed = [s for s in slows if s.closed is not None and s.opened]
    answers = Counter(s.answer.split(b"\r\n", 1)[0].decode(errors="replace") for s in closed)
    result.note(
        f"still open by kind: {dict(per_kind) or 'none'}; closed by the server: {len(closed)} "
        f"({dict(answers)}); never opened: {sum(1 for s in slows if not s.opened)}; "
        f"{len(probes)} ordinary requests"
    )


# --- 6. Poisoned inputs --------------------------------------------------------------------------

HUGE = "x" * (900 * 1024)


@dataclass(frozen=True)
class Poison:
    name: str
    rest: bytes  # body for the REST doors (execute, queue)
    v1: bytes  # body for /v1 (the agent's name is filled in for {model})


def _v1(fields: str) -> bytes:
    return ('{"model":"{model}",' + fields + "}").encode()


USER = '"messages":[{"role":"user","content":"x"}]'
POISONS = (
    Poison(
        "lone high surrogate",
        b'{"input":"a\\ud800b"}',
        _v1('"messages":[{"role":"user","content":"a\\ud800b"}]'),
    ),
    Poison(
        "lone low surrogate",
        b'{"input":"a\\udc00b"}',
        _v1('"messages":[{"role":"user","content":"a\\udc00b"}]'),
    ),
    Poison(
        "surrogate in a message",
        b'{"input":[{"role":"user","content":"a\\ud83db"}]}',
        _v1('"messages":[{"role":"system","content":"s\\ud83d"},{"role":"user","content":"x"}]'),
    ),
    Poison(
        "surrogate in metadata",
        b'{"input":"x","metadata":{"k":"a\\ud800b"}}',
        _v1(USER + ',"metadata":{"k":"a\\ud800b"}'),
    ),
    Poison(
        "surrogate in session_id / user",
        b'{"input":"x","session_id":"s\\ud800"}',
        _v1(USER + ',"user":"u\\ud800"'),
    ),
    Poison(
        "NUL", b'{"input":"a\\u0000b"}', _v1('"messages":[{"role":"user","content":"a\\u0000b"}]')
    ),
    Poison(
        "huge metadata (900 KiB)",
        ('{"input":"x","metadata":{"blob":"' + HUGE + '"}}').encode(),
        _v1(USER + ',"metadata":{"blob":"' + HUGE + '"}'),
    ),
    Poison('max_tokens "10"', b'{"input":"x","max_tokens":"10"}', _v1(USER + ',"max_tokens":"10"')),
    Poison("max_tokens true", b'{"input":"x","max_tokens":true}', _v1(USER + ',"max_tokens":true')),
    Poison("input a number", b'{"input":5}', _v1('"messages":[{"role":"user","content":5}]')),
    Poison("input null", b'{"input":null}', _v1('"messages":null')),
    Poison("metadata a list", b'{"input":"x","metadata":[1]}', _v1(USER + ',"metadata":[1]')),
    Poison(
        "invalid UTF-8",
        b'{"input":"a\xff\xfeb"}',
        b'{"model":"{model}","messages":[{"role":"user","content":"a\xff\xfeb"}]}',
    ),
    Poison("truncated JSON", b'{"input":"a', b'{"model":"{model}","messages":[{"role":'),
)


def poison_body(poison: Poison, door: str, agent: str) -> bytes:
    if door in ("execute", "queue"):
        return poison.rest
    return poison.v1.replace(b"{model}", agent.encode())


def poisoned(
    tmp: Path, *, requests: int = 1000, concurrency: int = 20, starvation_probes: int = 20
) -> Result:
    """``requests`` poisoned bodies (:data:`POISONS`) on every door from a key restricted to
    one agent, whose deployment holds 20 calls; meanwhile and afterwards, another agent on the
    same deployment must be served."""
    result = Result("poisoned", f"{requests:,} poisoned inputs on every door")
    with timed(result):
        fake = FakeLLM(tmp)
        agents: list[dict[str, Any]] = [
            {"name": "target", "timeout_s": 10, "daily_budget_usd": 1},
            {"name": "other"},
        ]
        cfg = config(fake, agents, max_concurrency=20)
        keys = {"poisoner": ("execute", ["target"])}
        with deployment(
            tmp, hint="poison", mode="embedded", config=cfg, fake=fake, keys=keys
        ) as stack:
            bad_key, good_key = stack.keys["poisoner"], stack.admin_key
            asyncio.run(
                _poisoned(
                    stack, bad_key, good_key, result, requests, concurrency, starvation_probes
                )
            )
    return result


async def _poisoned(
    stack: Stack,
    bad_key: str,
    good_key: str,
    result: Result,
    requests: int,
    concurrency: int,
    probes_after: int,
) -> None:
    doors = ("execute", "queue", "v1")
    combos = [(p, d) for p in POISONS for d in doors]
    calls = []
    for i in range(requests):
        poison, door = combos[i % len(combos)]
        body = poison_body(poison, door, "target")
        calls.append(Call(door, "target", bad_key, body=body, tag=f"{poison.name} on {door}"))
    stop = asyncio.Event()
    probes: list[Answer] = []
    async with Client(stack.url, timeout_s=30) as client:

        async def probe() -> None:
            while not stop.is_set():
                probes.append(await client.send(Call("execute", "other", good_key)))
                await asyncio.sleep(0.5)

        prober = asyncio.create_task(probe())
        answers = await closed_loop(client, calls, concurrency=concurrency)
        stop.set()
        await prober
        # The queue door hands its executions to the worker: let it work through them.
        await poll_until(time.monotonic() + 20, lambda: observe.running(stack) == 0)
        after = await closed_loop(
            client, [Call("execute", "other", good_key)] * probes_after, concurrency=5
        )
    fivexx = [a for a in answers if a.status is None or a.status >= 500]
    result.add("bad_input_5xx", "5xx (or no answer) on bad input", len(fivexx))
    accepted = [a for a in answers if a.status is not None and 200 <= a.status < 300]
    result.add("bad_input_accepted", "bad input accepted (2xx)", len(accepted))
    await asyncio.to_thread(held_figures, result, stack, "after the poisoned run")
    starved = [a for a in probes + after if not a.success]
    result.add("starved", "other agent's requests not served (during and after)", len(starved))
    by_case: Counter[str] = Counter(a.call.tag for a in fivexx)
    if by_case:
        result.note("5xx by case: " + "; ".join(f"{t}: {n}" for t, n in sorted(by_case.items())))
    ok_case: Counter[str] = Counter(a.call.tag for a in accepted)
    if ok_case:
        result.note(
            "accepted by case: " + "; ".join(f"{t}: {n}" for t, n in sorted(ok_case.items()))
        )
    result.note(
        f"other agent: {len(probes)} requests during ({_kinds(probes)}), {len(after)} after "
        f"({_kinds(after)}); answers to the poisoned: {_kinds(answers)}"
    )


# --- 7. Restart on the day a budget was created (embedded) ---------------------------------------


def restart_overspend(tmp: Path, *, price: float = 1250.0, factor: float = 1.5) -> Result:
    """Embedded ``serve`` with two budgets created just now ($1.00 daily on one agent, $1.00
    monthly on another; $0.02 a call): each agent is sent ``factor`` x its budget's worth of
    calls, ``serve`` is restarted (SIGTERM, then started again), and the same again. The
    ledger must stay within each limit."""
    result = Result("restart-overspend", "embedded serve restarted the day its budgets were made")
    with timed(result):
        fake = FakeLLM(tmp)
        agents: list[dict[str, Any]] = [
            {"name": "daily", "daily_budget_usd": 1},
            {"name": "monthly"},
        ]
        budgets = [
            {"scope": "global", "daily_limit_usd": 100},
            {"scope": "agent", "target": "monthly", "monthly_limit_usd": 1},
        ]
        cfg = config(fake, agents, price=price, budgets=budgets)
        keys = {"chaos": ("execute", ["daily", "monthly"])}
        with deployment(
            tmp, hint="restart", mode="embedded", config=cfg, fake=fake, keys=keys, admin=False
        ) as stack:
            key = stack.keys["chaos"]
            per_phase = round(factor * 1.0 / call_cost(price))
            asyncio.run(_restart(stack, key, result, per_phase))
    return result


async def _restart(stack: Stack, key: str, result: Result, per_phase: int) -> None:
    calls = [Call("execute", agent, key) for agent in ("daily", "monthly")] * per_phase
    phases = []
    for phase in range(2):
        if phase:
            await asyncio.to_thread(stack.kill_serve, signal.SIGTERM)
            await asyncio.to_thread(stack.start_serve)
        async with Client(stack.url, timeout_s=30) as client:
            answers = await closed_loop(client, calls, concurrency=4)
        phases.append(answers)
    ids = {a.execution_id for answers in phases for a in answers if a.execution_id}
    # The journal drains into the database about every 0.2 s: wait until every row is there.
    await poll_until(
        time.monotonic() + 20, lambda: not observe.missing_rows(stack, {i for i in ids if i})
    )
    await asyncio.sleep(1)
    await asyncio.to_thread(money_figures, result, stack)
    lost_figure(result, stack, [a for answers in phases for a in answers])
    counts = [
        {
            agent: sum(1 for a in answers if a.call.agent == agent and a.success)
            for agent in ("daily", "monthly")
        }
        for answers in phases
    ]
    result.note(f"successes before the restart {counts[0]}, after {counts[1]}")


# --- the set -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Path], Result]
    quick: bool = False  # also in CI (tests/chaos/), with the sizes below


FULL: tuple[Scenario, ...] = (
    Scenario("poisoned", lambda tmp: poisoned(tmp)),
    Scenario("restart-overspend", lambda tmp: restart_overspend(tmp)),
    Scenario("kill-embedded", lambda tmp: kill_in_flight(tmp, mode="embedded")),
    Scenario("kill-distributed", lambda tmp: kill_in_flight(tmp, mode="distributed")),
    Scenario("redis-stall", lambda tmp: redis_stall(tmp)),
    Scenario("redis-empty", lambda tmp: redis_restart_empty(tmp)),
    Scenario("pg-refusing", lambda tmp: postgres_refusing(tmp)),
    Scenario("disconnects", lambda tmp: disconnects(tmp)),
    Scenario("slow-clients", lambda tmp: slow_clients(tmp)),
)

# The quick sizes tests/chaos/ runs (the targets are the same).
# No Celery worker in these distributed runs: what it adds (the reaper, every 60 s) cannot act
# within their shorter waits, and it costs a process start on a 2-core CI machine.
QUICK: dict[str, Callable[[Path], Result]] = {
    "poisoned": lambda tmp: poisoned(tmp, requests=300, starvation_probes=10),
    "restart-overspend": lambda tmp: restart_overspend(tmp, price=2500),
    "disconnects": lambda tmp: disconnects(
        tmp, clients=400, concurrency=50, settle_s=5, celery=False
    ),
    "redis-empty": lambda tmp: redis_restart_empty(
        tmp, rate=30, before_s=6, down_s=2, after_s=6, budget_calls=60, settle_s=5, celery=False
    ),
}
