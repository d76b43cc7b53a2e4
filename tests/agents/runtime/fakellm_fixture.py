"""Real fakellm upstreams on 127.0.0.1 for the provider and executor HTTP tests.

Each test gets its own servers (aiohttp on a free port, in the test's event loop). Faults are set
and read through fakellm's admin API, the way a drill or an operator drives it, and every server
is reset through that API before the test sees it.

A test module wraps :func:`upstreams` and :func:`provider_router` in its own small fixtures
(importing fixture functions would shadow names and trip ruff's F811).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import aiohttp

from agents.devtools.fakellm import FakeLLM, FaultConfig
from agents.devtools.fakellm.faults import FaultModel
from agents.runtime.clock import SystemClock
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.types import Deployment, Message, ProviderConfig

Kind = Literal["openai", "anthropic"]
KINDS: tuple[Kind, ...] = ("openai", "anthropic")
UPSTREAM_MODEL = {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-20241022"}
POLL_S = 0.01


@dataclass
class Upstream:
    """One running fakellm and an admin client for it."""

    server: FakeLLM
    admin: aiohttp.ClientSession

    @property
    def url(self) -> str:
        return self.server.url

    def base_url(self, kind: Kind) -> str:
        return f"{self.url}/v1" if kind == "openai" else self.url

    def deployment(
        self,
        id: int,
        model: str,
        *,
        kind: Kind = "openai",
        api_key: str | None = "sk-test",
        input_usd_per_mtok: str = "3",
        output_usd_per_mtok: str = "15",
    ) -> Deployment:
        return Deployment(
            id=id,
            model=model,
            provider=ProviderConfig(f"fakellm-{kind}-{id}", kind, self.base_url(kind), api_key),
            upstream_model=UPSTREAM_MODEL[kind],
            input_usd_per_mtok=Decimal(input_usd_per_mtok),
            output_usd_per_mtok=Decimal(output_usd_per_mtok),
            max_concurrency=100,
            weight=1,
        )

    async def _call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.admin.request(method, path, json=body) as response:
            data = await response.json()
            assert response.status == 200, data
            return data

    async def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the whole fault configuration (unnamed fields take their defaults)."""
        data: dict[str, Any] = await self._call("PUT", "/_admin/faults", faults)
        return data

    async def reset(self) -> None:
        await self._call("POST", "/_admin/reset")

    async def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = await self._call("GET", "/_admin/stats")
        return data

    async def total(self) -> int:
        return int((await self.stats())["total"])

    async def requests(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await self._call("GET", "/_admin/requests"))["items"]
        return items

    async def wait_for_requests(self, count: int, *, timeout_s: float = 5.0) -> None:
        """Poll (bounded) until ``count`` generation requests have arrived."""
        deadline = time.monotonic() + timeout_s
        while await self.total() < count:
            assert time.monotonic() < deadline, f"fakellm did not see {count} requests"
            await asyncio.sleep(POLL_S)


StartUpstream = Callable[..., Awaitable[Upstream]]


@contextlib.asynccontextmanager
async def upstreams() -> AsyncIterator[StartUpstream]:
    """Start as many fakellm servers as a test needs (``await start(**faults)``); all are
    stopped on exit. Each is reset through its admin API before it is handed over."""
    started: list[Upstream] = []

    async def start(**faults: Any) -> Upstream:
        server = await FakeLLM(FaultConfig(**faults)).start()
        upstream = Upstream(server, aiohttp.ClientSession(base_url=server.url))
        started.append(upstream)
        await upstream.reset()
        return upstream

    try:
        yield start
    finally:
        for upstream in reversed(started):
            await upstream.admin.close()
            await upstream.server.close()


@contextlib.asynccontextmanager
async def provider_router() -> AsyncIterator[ProviderRouter]:
    """The production provider client, with its pooled session on the running loop."""
    providers = ProviderRouter(clock=SystemClock())
    try:
        yield providers
    finally:
        await providers.close()


def fake_input_tokens(messages: Sequence[Message]) -> int:
    """fakellm's input-token count (docs/FAKELLM.md): all message text // 4 + one per message."""
    return sum(len(m.content) for m in messages) // 4 + len(messages)


def seed_for_streams(outcomes: Sequence[str], *, cut_stream_rate: float) -> int:
    """A fakellm seed whose first streamed requests have exactly these outcomes (e.g. cut, ok),
    computed with fakellm's own fault model so it does not depend on its random draws."""
    for seed in range(10_000):
        model = FaultModel(FaultConfig(cut_stream_rate=cut_stream_rate, seed=seed))
        drawn = [model.decide(stream=True, override=None).outcome for _ in outcomes]
        if drawn == list(outcomes):
            return seed
    raise AssertionError(f"no seed in 0..9999 gives {outcomes}")
