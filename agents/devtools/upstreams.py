"""The demo's upstreams: one fakellm per provider of demo/breakwater.yaml, and its outages.

Each provider of the demo is a fakellm (agents/devtools/fakellm) on a fixed loopback port, run
in the serving process's event loop, with the latency of the reference deployment's per-agent
table and a background error rate of 1.5% (the status varies by upstream: 503, 529, 500, 429,
502). Retries absorb nearly all of those, as they do in production.

Every ``every_s`` seconds (default 240) one primary goes down for 30 to 45 seconds
(:class:`OutageSchedule`, deterministic for its seed): every request to it fails with a 5xx
(odd-numbered outages answer slowly, like a gateway timing out). The primaries take turns, in
:data:`OUTAGE_TARGETS` order. Five failures in a row open its deployment breaker (the runtime's
deployment breaker: 5 consecutive failures, 30 s recovery), the agents on it are served by their
fallback model, the breaker opening opens a ``breaker_open`` incident, and after the outage
the half-open probe succeeds, the breaker closes and the incident resolves itself
(incidents/events.py). The outage is made with fakellm's own fault model, the same settings its
admin endpoint (``POST /_admin/faults``) changes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from agents.devtools.fakellm.faults import FaultConfig
from agents.devtools.fakellm.server import FakeLLM

log = logging.getLogger("breakwater.demo")

HOST = "127.0.0.1"
BACKGROUND_ERROR_RATE = 0.015


class UpstreamPortInUse(OSError):
    """A demo upstream's port is taken (most often: another demo is running)."""


@dataclass(frozen=True, slots=True)
class Upstream:
    provider: str  # the provider's name in demo/breakwater.yaml
    kind: str  # openai or anthropic (fakellm speaks both on one port)
    port: int
    faults: FaultConfig

    @property
    def base_url(self) -> str:
        root = f"http://{HOST}:{self.port}"
        return f"{root}/v1" if self.kind == "openai" else root


def _faults(latency_ms: float, status: int, output_tokens: int, seed: int) -> FaultConfig:
    return FaultConfig(
        latency_ms=latency_ms,
        jitter_ms=latency_ms / 4,
        error_rate=BACKGROUND_ERROR_RATE,
        error_status=status,
        retry_after=1.0 if status in (429, 503) else None,
        first_token_ms=latency_ms / 4,
        token_ms=8,
        output_tokens=output_tokens,
        seed=seed,
    )


# Latencies a little under the reference table's (0.8, 1.5, 2.0, 1.8, 1.0 s): Breakwater's own
# time is on top of them.
DEMO_UPSTREAMS: tuple[Upstream, ...] = (
    Upstream("sim-support", "openai", 18101, _faults(750, 503, 60, 11)),
    Upstream("sim-support-b", "openai", 18102, _faults(750, 503, 60, 12)),
    Upstream("sim-review", "anthropic", 18103, _faults(1450, 529, 220, 21)),
    Upstream("sim-analyst", "openai", 18104, _faults(1950, 500, 160, 31)),
    Upstream("sim-writer", "openai", 18105, _faults(1750, 429, 300, 41)),
    Upstream("sim-general", "anthropic", 18106, _faults(950, 502, 90, 51)),
)

# Whose primary goes down, in turn: customer-support's model (both of its deployments, or the
# balancer simply moves to the other one), code review's, the analyst's, the writer's, and
# the model the six smaller agents share.
OUTAGE_TARGETS: tuple[tuple[str, ...], ...] = (
    ("sim-support", "sim-support-b"),
    ("sim-review",),
    ("sim-analyst",),
    ("sim-writer",),
    ("sim-general",),
)


@dataclass(frozen=True, slots=True)
class Outage:
    index: int
    start_s: float  # seconds after the schedule's start
    end_s: float
    providers: tuple[str, ...]
    slow: bool  # answers after a long wait (a gateway timeout) rather than at once

    def faults(self, base: FaultConfig) -> FaultConfig:
        if self.slow:
            return replace(base, error_rate=1.0, error_status=502, latency_ms=3000, jitter_ms=500)
        return replace(base, error_rate=1.0, error_status=503, retry_after=None)


@dataclass(frozen=True, slots=True)
class OutageSchedule:
    """Outage ``n`` (from 0) starts at ``first_s + n * every_s`` and lasts between
    ``min_s`` and ``max_s`` (drawn from ``seed``); its targets rotate through ``targets``."""

    every_s: float = 240.0
    min_s: float = 30.0
    max_s: float = 45.0
    first_s: float = 90.0
    seed: int = 12
    targets: tuple[tuple[str, ...], ...] = OUTAGE_TARGETS

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"outage length: need 0 < min <= max, got {self.min_s}..{self.max_s}")
        if self.every_s <= self.max_s:
            raise ValueError(
                f"outage every: must be longer than an outage ({self.max_s:g} s), got {self.every_s:g}"
            )
        if self.first_s < 0:
            raise ValueError(f"first outage: must be >= 0 s, got {self.first_s:g}")
        if not self.targets:
            raise ValueError("outage targets: need at least one")

    def outage(self, index: int) -> Outage:
        if index < 0:
            raise ValueError(f"outage index: must be >= 0, got {index}")
        length = random.Random(self.seed * 1_000_003 + index).uniform(self.min_s, self.max_s)
        start = self.first_s + index * self.every_s
        return Outage(
            index, start, start + length, self.targets[index % len(self.targets)], index % 2 == 1
        )

    def at(self, elapsed_s: float) -> Outage | None:
        """The outage under way ``elapsed_s`` after the start, if any."""
        if elapsed_s < self.first_s:
            return None
        outage = self.outage(int((elapsed_s - self.first_s) // self.every_s))
        return outage if outage.start_s <= elapsed_s < outage.end_s else None


class DemoUpstreams:
    """The demo's fakellm servers, started in the current event loop."""

    def __init__(self, upstreams: tuple[Upstream, ...] = DEMO_UPSTREAMS) -> None:
        self.upstreams = {u.provider: u for u in upstreams}
        self.servers: dict[str, FakeLLM] = {}

    async def start(self) -> None:
        try:
            for upstream in self.upstreams.values():
                server = FakeLLM(upstream.faults, host=HOST, port=upstream.port)
                await server.start()
                self.servers[upstream.provider] = server
        except OSError as exc:
            await self.close()
            raise UpstreamPortInUse(
                f"demo upstream {upstream.provider}: cannot listen on {HOST}:{upstream.port} "
                f"({exc.strerror}); is another demo running?"
            ) from exc

    def set_outage(self, outage: Outage | None, providers: tuple[str, ...]) -> None:
        """Put ``providers`` down as ``outage`` says, or (None) back to their start-up faults."""
        for name in providers:
            model = self.servers[name].state.faults
            base = self.upstreams[name].faults
            model.set_config(base if outage is None else outage.faults(base), reseed=False)

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()
        self.servers.clear()


async def run_outages(
    upstreams: DemoUpstreams,
    schedule: OutageSchedule,
    *,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_change: Callable[[str], None] = log.warning,
) -> None:
    """Apply ``schedule`` until cancelled; an outage under way when cancelled is ended."""
    started = monotonic()
    index = 0
    current: Outage | None = None
    try:
        while True:
            outage = schedule.outage(index)
            await sleep(max(0.0, outage.start_s - (monotonic() - started)))
            upstreams.set_outage(outage, outage.providers)
            current = outage
            on_change(
                f"demo: outage {outage.index + 1}: {', '.join(outage.providers)} answer "
                f"{'502 after 3 s' if outage.slow else '503'} for "
                f"{outage.end_s - outage.start_s:.0f} s"
            )
            await sleep(max(0.0, outage.end_s - (monotonic() - started)))
            upstreams.set_outage(None, outage.providers)
            current = None
            on_change(
                f"demo: outage {outage.index + 1} over: {', '.join(outage.providers)} answer again"
            )
            index += 1
    finally:
        if current is not None:
            upstreams.set_outage(None, current.providers)


def provider_urls(upstreams: Mapping[str, Upstream] | None = None) -> dict[str, str]:
    """provider name -> base_url, as demo/breakwater.yaml must name them."""
    items = upstreams or {u.provider: u for u in DEMO_UPSTREAMS}
    return {name: u.base_url for name, u in items.items()}
