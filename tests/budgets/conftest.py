"""Builders shared by the budget tests: ledger entries, executions, budgets, counters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from agents.models import Agent, ApiKey, Execution
from agents.runtime.budgets import to_micros
from agents.runtime.memory import MemoryState
from agents.runtime.state import BreakerConfig, BudgetHold, Completion, WindowInit
from budgets.models import Budget, SpendEntry

# A Wednesday, mid-morning UTC: far from midnight unless a test says otherwise.
NOW = datetime(2026, 3, 11, 10, 0, tzinfo=UTC)
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def spend(
    usd: str | Decimal,
    *,
    at: datetime,
    agent: str = "support",
    api_key_id: int | None = None,
    cached: bool = False,
    saved: str = "0",
) -> SpendEntry:
    cost = Decimal(usd)
    return SpendEntry.objects.create(
        execution_id=uuid.uuid4(),
        at=at,
        agent_name=agent,
        api_key_id=api_key_id,
        model="m",
        input_usd_per_mtok=Decimal(1),
        output_usd_per_mtok=Decimal(2),
        cost_usd=cost,
        charged_micros=to_micros(cost, up=True),
        cached=cached,
        saved_usd=Decimal(saved),
    )


def execution(
    *,
    at: datetime,
    agent: str = "support",
    status: str = "succeeded",
    model: str = "m",
    latency_ms: int | None = 100,
    cost: str = "0.001",
    api_key: ApiKey | None = None,
    **fields: Any,
) -> Execution:
    if status == "degraded":
        fields.setdefault("fallback_used", True)
        fields.setdefault("fallback_reason", "timeout")
    return Execution.objects.create(
        agent_name=agent,
        status=status,
        model=model,
        latency_ms=latency_ms,
        cost_usd=Decimal(cost),
        api_key=api_key,
        created_at=at,
        finished_at=at + timedelta(milliseconds=latency_ms or 0),
        **fields,
    )


def budget(
    scope: str = "global",
    *,
    limit: str = "10",
    agent: Agent | None = None,
    api_key: ApiKey | None = None,
    created_at: datetime = LONG_AGO,
    **fields: Any,
) -> Budget:
    return Budget.objects.create(
        scope=scope,
        agent=agent,
        api_key=api_key,
        limit_usd=Decimal(limit),
        created_at=created_at,
        **fields,
    )


class Counters:
    """Budget counters in a real in-process state store, read the way the jobs read them."""

    def __init__(self, state: MemoryState | None = None) -> None:
        self.state = state or MemoryState()

    def settle(self, key: str, micros: int) -> None:
        """Spend ``micros`` on ``key`` as an execution does: reserved, then settled."""

        async def run() -> None:
            await self.state.budget_prepare((WindowInit(key, 0, 86_400.0),))
            entry_id = str(uuid.uuid4())
            reserved, _ = await self.state.budget_reserve(
                (BudgetHold(key, 10**15, micros, 86_400.0),), entry_id, 3_600.0
            )
            assert reserved
            await self.state.complete(
                Completion(
                    attempt=None,
                    deployment_breaker=BreakerConfig(),
                    entry_id=entry_id,
                    budget_settlements=((key, micros),),
                )
            )

        asyncio.run(run())

    def __call__(self, keys: tuple[str, ...]) -> Mapping[str, tuple[int, int]]:
        return asyncio.run(self.state.budget_usage(keys))


@pytest.fixture(autouse=True)
def _fresh_job_config() -> Iterator[None]:
    """The jobs' configuration (``budgets.services.job_call_floors``) follows the config
    version, which every test's rollback sets back: each test starts without one."""
    import budgets.services

    budgets.services._job_config = None
    yield
    budgets.services._job_config = None
