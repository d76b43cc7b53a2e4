"""API schemas for agents and executions."""

from __future__ import annotations

import copy
import json
from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from agents.config.schema import AgentSpec

MAX_MESSAGES = 200
MAX_TEXT = 200_000
NUL_REFUSED = "must not contain the NUL character (\\u0000)"


def _has_nul(value: Any) -> bool:
    """NUL anywhere in ``value``'s strings or keys: JSON allows it, PostgreSQL does not store it
    (console/api.py refuses it for every operation; execute is also served without ninja)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(item) for item in value)
    return False


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class MessageIn(StrictSchema):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        if _has_nul(value):
            raise ValueError(NUL_REFUSED)
        return value


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
            if _has_nul(value):
                raise ValueError(NUL_REFUSED)
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
        if _has_nul(value):
            raise ValueError(NUL_REFUSED)
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
    created_at: float = Field(description="Seconds since the epoch.")
    model_choice: str = Field(
        default="standard",
        description="standard, or cheap:simple / cheap:hint / cheap:budget_low when the cheap "
        "model was chosen",
    )
    steps: list[StepOut]


# --- errors ----------------------------------------------------------------------------------


class ErrorDetail(Schema):
    type: str
    message: str


class ErrorOut(Schema):
    """Every API error: ``{"error": {"type", "message"}}``."""

    error: ErrorDetail


# Declared on every operation, so the OpenAPI document shows the error format and every status
# the API may answer with: 400 a body that is not JSON, 401 no valid key, 403 a missing scope,
# 404 an unknown (or hidden) object, 409 a conflict, 413 a body over the size limit, 422 invalid
# input, 503 something it needs is unavailable (e.g. an agent whose provider key does not decrypt).
ERRORS: dict[int, type[Schema]] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    404: ErrorOut,
    409: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
    503: ErrorOut,
}


# --- agents ----------------------------------------------------------------------------------


def _spec_schema(handler: GetJsonSchemaHandler) -> dict[str, Any]:
    schema = handler(AgentSpec.__pydantic_core_schema__)
    if "$ref" in schema:
        schema = handler.resolve_ref_schema(schema)
    return copy.deepcopy(dict(schema))


class AgentIn(BaseModel):
    """An agent as config as code writes it (:class:`agents.config.schema.AgentSpec`).

    The body is validated by ``AgentSpec`` itself in the service, so the API and ``apply`` accept
    the same documents with the same ``path: message`` errors; here it only documents the shape.
    """

    model_config = ConfigDict(extra="allow")

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return _spec_schema(handler)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class AgentPatchIn(AgentIn):
    """Any subset of the agent's fields, merged into it (JSON merge patch, RFC 7396: mappings
    merge, lists are replaced, ``null`` restores the default) before the whole agent is
    validated again."""

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = _spec_schema(handler)
        schema.pop("required", None)
        return schema


class AgentOut(AgentSpec):
    daily_budget_usd: float | None = None  # type: ignore[assignment]  # money is a JSON number
    created_at: datetime
    updated_at: datetime


class AgentListOut(Schema):
    items: list[AgentOut]
    next: str | None


# --- breakers and deployments ----------------------------------------------------------------


class BreakerActionIn(StrictSchema):
    action: Literal["force_open", "force_close", "reset", "disable"] = Field(
        description="force_open rejects every call; force_close admits every call (outcomes "
        "still counted); disable admits and counts nothing; reset returns to automatic, closed, "
        "with clean counters."
    )
    reason: str = Field(default="", max_length=1000, description="Kept in the audit trail.")


class BreakerOut(Schema):
    key: str
    state: Literal["closed", "open", "half_open", "forced_open", "forced_closed", "disabled"]
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow: int
    open_until: datetime | None
    probes_in_flight: int


class DeploymentOut(Schema):
    id: int
    model: str
    provider: str
    upstream_model: str
    input_usd_per_mtok: float | None
    output_usd_per_mtok: float | None
    cached_input_usd_per_mtok: float | None
    max_concurrency: int
    weight: int
    enabled: bool
    breaker: BreakerOut
    in_flight: int


class DeploymentListOut(Schema):
    items: list[DeploymentOut]
    next: str | None


# --- stored executions -----------------------------------------------------------------------

ExecutionStatusName = Literal["succeeded", "degraded", "failed", "queued", "running", "cancelled"]


class ExecutionRecordOut(ExecutionOut):
    """A stored execution: the execution result, plus what the record keeps. A ``queued`` or
    ``running`` execution has no ``latency_ms`` or ``finished_at`` yet."""

    latency_ms: float | None  # type: ignore[assignment]
    finished_at: float | None
    session_id: str | None
    error: dict[str, Any] | None


class ExecutionDetailOut(ExecutionRecordOut):
    input: list[dict[str, Any]]
    metadata: dict[str, Any]


class ExecutionListOut(Schema):
    items: list[ExecutionRecordOut]
    next: str | None = Field(description="Opaque cursor for the next page (`after=`), or null.")


class ExecutionQuery(Schema):
    agent: str | None = Field(default=None, max_length=64)
    status: ExecutionStatusName | None = None
    after: str | None = Field(default=None, max_length=200, description="A `next` cursor.")
    limit: int = Field(default=50, ge=1, le=200)


class PageQuery(Schema):
    after: str | None = Field(default=None, max_length=200, description="A `next` cursor.")
    limit: int = Field(default=100, ge=1, le=500)
