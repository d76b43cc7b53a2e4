"""API schemas of ``GET /api/v1/slos`` (budgets.slos)."""

from __future__ import annotations

from datetime import date
from typing import Literal

from ninja import Schema
from pydantic import Field


class SloObjectiveOut(Schema):
    availability: float = Field(description="Share of valid requests a model must answer")
    latency_ms: int = Field(description="A valid request slower than this is bad for latency")
    latency_quantile: float = Field(description="Share of valid requests within latency_ms")


class SloWindowOut(Schema):
    valid: int = Field(description="Finished executions: succeeded, degraded or failed")
    good: int
    bad: int
    sli: float | None = Field(description="good / valid; null without valid requests")
    burn_rate: float | None = Field(
        description="(bad / valid) / (1 - objective): 1 spends the error budget over the window"
    )


class SloSliOut(Schema):
    objective: float
    windows: dict[str, SloWindowOut] = Field(description="5m, 30m, 1h, 6h, 24h, 30d")
    error_budget_remaining: float | None = Field(
        description="Share of the 30-day error budget left (negative once overspent); "
        "null without valid requests"
    )
    burn: Literal["fast", "slow"] | None = Field(
        description="fast: 1h and 5m burn rates over 14.4; slow: 6h and 30m over 6"
    )


class SloBudgetPointOut(Schema):
    day: date
    availability: float | None
    latency: float | None


class SloOut(Schema):
    agent: str
    enabled: bool
    objective: SloObjectiveOut
    availability: SloSliOut
    latency: SloSliOut
    error_budget_by_day: list[SloBudgetPointOut] = Field(
        description="The 30-day error budget remaining after each UTC day of the window"
    )


class SloListOut(Schema):
    items: list[SloOut]
    next: str | None
