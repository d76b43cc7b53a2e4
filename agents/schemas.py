"""API schemas for agents and executions."""

from __future__ import annotations

import json
from typing import Any, Literal

from ninja import Schema
from pydantic import ConfigDict, Field, field_validator

MAX_MESSAGES = 200
MAX_TEXT = 200_000


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class MessageIn(StrictSchema):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)


class ExecuteIn(StrictSchema):
    input: str | list[MessageIn] = Field(
        description="The task as text, or a list of chat messages."
    )
    session_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    metadata: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[MessageIn]) -> str | list[MessageIn]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must not be empty")
            if len(value) > MAX_TEXT:
                raise ValueError(f"must be at most {MAX_TEXT} characters")
        else:
            if not value:
                raise ValueError("must contain at least one message")
            if len(value) > MAX_MESSAGES:
                raise ValueError(f"must contain at most {MAX_MESSAGES} messages")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value)) > 8192:
            raise ValueError("must be at most 8 KiB as JSON")
        return value


class UsageOut(Schema):
    input_tokens: int
    output_tokens: int


class StepOut(Schema):
    kind: str
    model: str | None
    deployment: int | None
    outcome: str
    detail: str
    latency_ms: float
    input_tokens: int
    output_tokens: int


class ExecutionOut(Schema):
    execution_id: str
    agent: str
    status: Literal["succeeded", "degraded", "failed", "queued", "running", "cancelled"]
    output: str
    model: str | None
    deployment: int | None
    attempts: int
    fallback_used: bool
    fallback_reason: (
        Literal[
            "circuit_open", "budget_exceeded", "rate_limited", "timeout", "llm_error", "tool_error"
        ]
        | None
    )
    cached: bool
    usage: UsageOut
    cost_usd: float
    latency_ms: float
    created_at: float
    steps: list[StepOut]
