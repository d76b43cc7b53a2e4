"""An agent's ``max_concurrency``: its bulkhead in the serving process (docs/SCALING.md,
"Per-agent pools"). Two agents share one deployment of 4 slots; the heavy agent's calls hang
until released."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from agents.runtime.types import ChatResponse, ExecutionRequest, ExecutionStatus, Message
from tests.agents.runtime.support import Harness, ScriptedProvider, agent, deployment, harness


@dataclass
class GatedProvider(ScriptedProvider):
    """A call whose prompt says "heavy" waits for ``gate``; every other answers at once."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0

    async def chat(self, deployment: Any, request: Any, **kwargs: Any) -> ChatResponse:
        if request.messages[-1].content == "heavy":
            self.waiting += 1
            await self.gate.wait()
        return await super().chat(deployment, request, **kwargs)


def _pools(heavy_cap: int | None) -> tuple[Harness, GatedProvider]:
    h = harness(
        [
            agent("heavy", model="shared", fallback_models=(), max_concurrency=heavy_cap),
            agent("light", model="shared", fallback_models=()),
        ],
        [deployment(1, "shared", max_concurrency=4)],
        provider=GatedProvider,
    )
    assert isinstance(h.provider, GatedProvider)
    return h, h.provider


def _request(agent_name: str, text: str, *, queued: bool = False) -> ExecutionRequest:
    return ExecutionRequest(
        agent=agent_name,
        messages=(Message("user", text),),
        execution_id=str(uuid.uuid4()),
        queued=queued,
    )


async def _run_ready() -> None:
    """Let every task run until it waits on the gate or ends (nothing here waits on time)."""
    for _ in range(200):
        await asyncio.sleep(0)


async def _surge(h: Harness, size: int) -> list[asyncio.Task[Any]]:
    surge = [
        asyncio.create_task(h.executor.execute(_request("heavy", "heavy"))) for _ in range(size)
    ]
    await _run_ready()
    return surge


async def test_a_surge_of_one_capped_agent_leaves_the_shared_deployment_to_the_others() -> None:
    h, provider = _pools(heavy_cap=2)
    surge = await _surge(h, 8)

    refused = [t.result() for t in surge if t.done()]
    # Two hold the agent's slots; the six others are refused at once, without a round trip.
    assert (provider.waiting, len(refused)) == (2, 6)
    assert {r.status for r in refused} == {ExecutionStatus.DEGRADED}
    assert {r.fallback_reason for r in refused} == {"rate_limited"}
    assert {r.retry_after for r in refused} == {1.0}
    assert {r.steps[-1].outcome for r in refused} == {"agent_capacity"}
    assert h.state.counts["admit"] == 2
    # The light agent's synchronous calls still find the deployment's free slots.
    for _ in range(3):
        answer = await h.executor.execute(_request("light", "hi"))
        assert answer.status == ExecutionStatus.SUCCEEDED
    assert h.executor.in_flight("heavy") == 2

    provider.gate.set()
    finished = await asyncio.gather(*surge)
    assert (
        sorted(r.status for r in finished)
        == [ExecutionStatus.DEGRADED] * 6 + [ExecutionStatus.SUCCEEDED] * 2
    )
    # The slots came back: the agent runs again.
    assert h.executor.in_flight("heavy") == 0
    assert (await h.executor.execute(_request("heavy", "now"))).status == ExecutionStatus.SUCCEEDED


async def test_without_a_cap_the_same_surge_takes_every_slot_and_starves_the_other_agent() -> None:
    h, provider = _pools(heavy_cap=None)
    surge = await _surge(h, 8)

    assert provider.waiting == 4  # the deployment's max_concurrency
    starved = await h.executor.execute(_request("light", "hi"))
    assert starved.status == ExecutionStatus.DEGRADED
    assert starved.steps[-1].outcome == "no_capacity"
    provider.gate.set()
    await asyncio.gather(*surge)


async def test_queued_executions_are_not_counted_against_the_cap() -> None:
    h, provider = _pools(heavy_cap=1)
    held = asyncio.create_task(h.executor.execute(_request("heavy", "heavy", queued=True)))
    await _run_ready()
    assert provider.waiting == 1

    sync = await h.executor.execute(_request("heavy", "hi"))

    assert sync.status == ExecutionStatus.SUCCEEDED
    provider.gate.set()
    assert (await held).status == ExecutionStatus.SUCCEEDED


async def test_a_cancelled_execution_gives_its_slot_back() -> None:
    h, provider = _pools(heavy_cap=1)
    held = asyncio.create_task(h.executor.execute(_request("heavy", "heavy")))
    await _run_ready()
    assert provider.waiting == 1
    assert (await h.executor.execute(_request("heavy", "hi"))).steps[-1].outcome == (
        "agent_capacity"
    )

    held.cancel()
    await asyncio.gather(held, return_exceptions=True)

    assert h.executor.in_flight("heavy") == 0
    assert (await h.executor.execute(_request("heavy", "hi"))).status == ExecutionStatus.SUCCEEDED
