"""Test doubles for the runtime's ports: in-memory config, a scripted provider, a counting
state store. Real HTTP providers are tested against ``manage.py fakellm`` elsewhere."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from agents.runtime.clock import FakeClock
from agents.runtime.errors import ProviderFailure
from agents.runtime.executor import Executor, RetryPolicy
from agents.runtime.memory import MemoryState
from agents.runtime.ports import ListRecords
from agents.runtime.providers.base import OnToken
from agents.runtime.redis_wire import RedisWire
from agents.runtime.state import BreakerConfig
from agents.runtime.types import (
    AgentConfig,
    BudgetRule,
    ChatRequest,
    ChatResponse,
    Deployment,
    ExecutionRequest,
    Message,
    ProviderConfig,
    Usage,
)


def deployment(
    id: int, model: str, *, max_concurrency: int = 100, weight: int = 1, price: str = "1"
) -> Deployment:
    return Deployment(
        id=id,
        model=model,
        provider=ProviderConfig(f"p{id}", "openai", "http://127.0.0.1:1/v1", None),
        upstream_model=f"up-{model}",
        input_usd_per_mtok=Decimal(price),
        output_usd_per_mtok=Decimal(price) * 2,
        max_concurrency=max_concurrency,
        weight=weight,
    )


@dataclass
class StaticConfig:
    agents: dict[str, AgentConfig]
    by_model: dict[str, tuple[Deployment, ...]]
    rules: tuple[BudgetRule, ...] = ()

    def budgets(self, agent: str, api_key_id: int | None) -> tuple[BudgetRule, ...]:
        return tuple(
            r
            for r in self.rules
            if r.scope == "global"
            or (r.scope == "agent" and r.target == agent)
            or (r.scope == "api_key" and r.target == str(api_key_id))
        )

    def agent(self, name: str) -> AgentConfig | None:
        return self.agents.get(name)

    def deployments(self, model: str) -> tuple[Deployment, ...]:
        return self.by_model.get(model, ())


Script = ProviderFailure | str | ChatResponse


@dataclass
class ScriptedProvider:
    """Answers each call with the next scripted item for that model (or ``default``).

    An item may be a ProviderFailure (raised), a string (answered), or a ChatResponse. A float
    item means "take that long": the fake clock advances by it before the next item applies.
    """

    clock: FakeClock
    scripts: dict[str, list[Any]] = field(default_factory=dict)
    default: str = "ok"
    calls: list[tuple[str, int, float]] = field(default_factory=list)

    async def chat(
        self,
        deployment: Deployment,
        request: ChatRequest,
        *,
        timeout_s: float,
        on_token: OnToken | None = None,
    ) -> ChatResponse:
        self.calls.append((deployment.model, deployment.id, timeout_s))
        queue = self.scripts.get(deployment.model, [])
        item: Any = queue.pop(0) if queue else self.default
        while isinstance(item, float | int) and not isinstance(item, bool):
            from agents.runtime.errors import Timeout

            if item >= timeout_s:
                await self.clock.sleep(timeout_s)
                raise Timeout("scripted hang", phase="total")
            await self.clock.sleep(item)
            item = queue.pop(0) if queue else self.default
        if isinstance(item, ProviderFailure):
            raise item
        if isinstance(item, ChatResponse):
            return item
        if on_token is not None:
            for word in item.split(" "):
                await on_token(word)
        return ChatResponse(item, (), Usage(10, 5), "stop")


class CountingState:
    """Wraps a StateStore and counts calls (to check the round-trip budget)."""

    def __init__(self, inner: MemoryState) -> None:
        self.inner = inner
        self.counts: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.counts[name] = self.counts.get(name, 0) + 1
            return await attr(*args, **kwargs)

        return counted


def agent(name: str = "support", **overrides: Any) -> AgentConfig:
    base = AgentConfig(
        name=name,
        model="primary",
        fallback_models=("backup",),
        timeout_s=10.0,
        max_retries=2,
        breaker=BreakerConfig(failure_threshold=3, recovery_timeout_s=30.0),
    )
    return replace(base, **overrides)


@dataclass
class Harness:
    clock: FakeClock
    state: CountingState
    provider: ScriptedProvider
    records: ListRecords
    executor: Executor
    config: StaticConfig

    async def run(self, text: str = "hello", agent: str = "support", **kwargs: Any) -> Any:
        import uuid

        request = ExecutionRequest(
            agent=agent, messages=(Message("user", text),), execution_id=str(uuid.uuid4())
        )
        return await self.executor.execute(request, **kwargs)


def harness(
    agents: Iterable[AgentConfig] = (),
    deployments: Iterable[Deployment] = (),
    *,
    retry: RetryPolicy | None = None,
    provider: type[ScriptedProvider] = ScriptedProvider,
) -> Harness:
    clock = FakeClock()
    agents = list(agents) or [agent()]
    deployments = list(deployments) or [deployment(1, "primary"), deployment(2, "backup")]
    by_model: dict[str, tuple[Deployment, ...]] = {}
    for item in deployments:
        by_model[item.model] = (*by_model.get(item.model, ()), item)
    config = StaticConfig({a.name: a for a in agents}, by_model)
    state = CountingState(MemoryState(clock))
    scripted = provider(clock)
    records = ListRecords()
    import random

    executor = Executor(
        config=config,
        state=state,
        providers=scripted,
        clock=clock,
        records=records,
        retry=retry,
        rng=random.Random(7),
    )
    return Harness(clock, state, scripted, records, executor, config)


class Commands:
    """A Redis client that records the name of every command sent through it."""

    def __init__(self, inner: RedisWire) -> None:
        self.inner = inner
        self.names: list[str] = []

    async def execute_command(self, *args: Any) -> Any:
        self.names.append(str(args[0]).upper())
        return await self.inner.execute_command(*args)

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names
