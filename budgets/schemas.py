"""API schemas for budgets and per-agent stats."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from ninja import Schema
from pydantic import ConfigDict, Field, StrictBool


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class BudgetOut(Schema):
    # The fields of docs/INTERFACES.md §4:
    id: int
    scope: Literal["global", "agent", "api_key"]
    target: str = Field(description='"*", the agent name, or the API key prefix')
    window: Literal["daily", "monthly"]
    limit_usd: float = Field(description="The effective limit: configured plus an active raise")
    spent_usd: float
    reserved_usd: float
    remaining_usd: float
    forecast_usd: float = Field(description="Projected spend at the end of the window")
    state: Literal["ok", "warning", "exceeded", "paused"]
    # Beyond them:
    threshold: Literal["warn", "alert"] | None
    base_limit_usd: float
    warn_at_pct: int
    alert_at_pct: int
    paused: bool
    raise_usd: float | None
    raise_until: datetime | None
    timezone: str
    window_id: str
    window_starts_at: datetime
    window_ends_at: datetime
    rate_usd_per_hour: float = Field(description="Ledger spend over the last hour, per hour")
    predictability: float | None = Field(description="forecast_usd / limit_usd (null: limit 0)")
    metric_scope: str = Field(description="The scope label of the budget gauges")
    refused: int = Field(description="Calls refused for this budget in the window")
    floor_usd: float | None = Field(
        description="The smallest call the budget must still admit (its agents' worst-case "
        "call, or the smallest amount it refused): state is exceeded once remaining is below it"
    )


class BudgetListOut(Schema):
    items: list[BudgetOut]
    next: str | None = None


class BudgetPatchIn(StrictSchema):
    paused: StrictBool


class BudgetRaiseIn(StrictSchema):
    amount_usd: float = Field(strict=True, gt=0, lt=100_000_000, allow_inf_nan=False)
    reason: str = Field(min_length=1, max_length=500)


class AgentStatsOut(Schema):
    agent: str
    requests: int
    requests_per_day: float
    succeeded: int
    degraded: int
    failed: int
    cancelled: int
    success_rate: float | None
    avg_latency_ms: float | None
    p95_latency_ms: float | None
    cost_usd: float
    cost_per_day_usd: float
    input_tokens: int
    output_tokens: int
    cache_hits: int
    cache_hit_rate: float | None
    saved_usd: float
    model_choices: dict[str, int]
    fallbacks: int = Field(description="Executions answered by a fallback (fallback_used)")
    fallback_rate: float | None = Field(description="fallbacks / requests (null: no requests)")
    fallback_reasons: dict[str, int] = Field(description="The fallbacks by fallback_reason")


class AgentStatsListOut(Schema):
    items: list[AgentStatsOut]
    next: str | None = None
    window: str
    since: datetime
    until: datetime
