"""Demo and load traffic through the real execute path (HTTP to the API).

The mix follows the reference deployment's per-agent volumes (customer-support 200K/day,
code-review 150K, data-analyst 80K, content-writer 40K, the other six 30K together), scaled to
the chosen rate. Arrivals are Poisson (open loop: a slow server does not slow the offered
load). Questions come from small per-agent pools with a skewed choice, so some repeat and the
response cache has work.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

REFERENCE_MIX: dict[str, float] = {
    "customer-support": 200_000,
    "code-review": 150_000,
    "data-analyst": 80_000,
    "content-writer": 40_000,
    # the other six share 30K/day
    "sales-assistant": 5_000,
    "it-helpdesk": 5_000,
    "hr-policy": 5_000,
    "translator": 5_000,
    "meeting-summarizer": 5_000,
    "release-notes": 5_000,
}

QUESTIONS: dict[str, Sequence[str]] = {
    "customer-support": (
        "How do I return a pair of shoes?",
        "Can I change my shipping address?",
        "Do you ship to Canada?",
        "My discount code does not work.",
        "How long does a refund take?",
        "Where is my order #{n}?",
    ),
    "code-review": (
        "Review this diff: def add(a, b): return a - b",
        "Is this SQL safe? cursor.execute('SELECT * FROM t WHERE id=' + user_id)",
        "Review: for i in range(len(xs)): print(xs[i])",
        "Any race here? if not os.path.exists(p): open(p, 'w')",
    ),
    "data-analyst": (
        "Weekly active users by country for the last 8 weeks?",
        "Which products had the highest return rate last month?",
        "Revenue per region, quarter over quarter?",
    ),
    "content-writer": (
        "Write a 100-word intro for our spring sale.",
        "Draft a product description for a waterproof jacket.",
        "Newsletter subject lines for a new feature launch ({n}).",
    ),
}
DEFAULT_QUESTIONS = (
    "Summarise the attached notes.",
    "What is our policy on this?",
    "Translate 'thank you for your patience' to French.",
    "Reset my VPN password.",
)


@dataclass
class LoadStats:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    http_errors: Counter[int] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        p50 = statistics.median(lat) if lat else 0.0
        p95 = lat[int(len(lat) * 0.95) - 1] if len(lat) >= 20 else (lat[-1] if lat else 0.0)
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        errors = ", ".join(f"HTTP {k}: {v}" for k, v in sorted(self.http_errors.items()))
        return (
            f"sent {self.sent}; {parts or 'no answers'}"
            + (f"; {errors}" if errors else "")
            + f"; latency p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        )


def pick_question(agent: str, rng: random.Random) -> str:
    pool = QUESTIONS.get(agent, DEFAULT_QUESTIONS)
    # Skewed choice: the first questions are asked far more often (cache hits); the last
    # ones carry an {n} placeholder that makes them unique.
    index = min(int(rng.expovariate(1.0)), len(pool) - 1)
    return pool[index].format(n=rng.randrange(10_000))


async def run_load(
    *,
    base_url: str,
    api_key: str,
    rate: float,
    duration_s: float | None,
    agents: Sequence[str] | None = None,
    seed: int | None = None,
    max_in_flight: int = 256,
    stats: LoadStats | None = None,
) -> LoadStats:
    """Offer ``rate`` executions per second for ``duration_s`` (None: until cancelled)."""
    if rate <= 0:
        raise ValueError("rate: must be > 0")
    rng = random.Random(seed)
    names = [a for a in REFERENCE_MIX if agents is None or a in agents] or list(agents or [])
    weights = [REFERENCE_MIX.get(a, 5_000) for a in names]
    stats = stats or LoadStats()
    gate = asyncio.Semaphore(max_in_flight)
    headers = {"Authorization": f"Bearer {api_key}"}
    pending: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, agent: str) -> None:
        started = time.perf_counter()
        try:
            async with session.post(
                f"{base_url}/api/v1/agents/{agent}/execute",
                json={"input": pick_question(agent, rng), "metadata": {"source": "loadgen"}},
                headers=headers,
            ) as response:
                body = await response.json(content_type=None)
                if response.status == 200:
                    stats.statuses[str(body.get("status"))] += 1
                else:
                    stats.http_errors[response.status] += 1
        except (aiohttp.ClientError, TimeoutError, ValueError):
            stats.http_errors[0] += 1
        finally:
            stats.latencies_ms.append((time.perf_counter() - started) * 1000)
            gate.release()

    deadline = None if duration_s is None else time.monotonic() + duration_s
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            while deadline is None or time.monotonic() < deadline:
                await asyncio.sleep(rng.expovariate(rate))
                if not gate._value:  # saturated: drop (open loop), count it
                    stats.http_errors[-1] += 1
                    continue
                await gate.acquire()
                agent = rng.choices(names, weights)[0]
                stats.sent += 1
                task = asyncio.create_task(one(session, agent))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            if pending:
                await asyncio.wait(pending, timeout=30)
    return stats
