"""API schemas for agents and executions."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from ninja import Schema
from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, field_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from agents.config.schema import AgentSpec, BreakerSpec, ToolSpec

MAX_MESSAGES = 200
MAX_TEXT = 200_000
METADATA_MAX_BYTES = 8192
NUL_REFUSED = "must not contain the NUL character (\\u0000)"
SURROGATE_REFUSED = (
    "must not contain a lone surrogate (\\ud800-\\udfff): text must be valid Unicode"
)

# Text that cannot go anywhere: JSON allows "\u0000" and a lone surrogate ("\ud800", or its
# raw UTF-8 bytes, which ``json.loads`` passes through), but PostgreSQL stores neither and a
# surrogate cannot be encoded as UTF-8, so the upstream call (orjson) and the record would fail
# after money is reserved. Every door refuses them before admission, naming the field.
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")  # to quote such text in a message

Loc = tuple[str | int, ...]


def text_problem(value: str) -> str | None:
    """Why ``value`` is refused (:data:`NUL_REFUSED`, :data:`SURROGATE_REFUSED`), or None.

    Cheap on the hot path: NUL is one ``memchr``; an ASCII string (``isascii`` is O(1) in
    CPython) holds no surrogate; any other string is encoded once, which only a surrogate makes
    fail (faster than a regex scan: 0.2 us for 200 characters, 0.3 ms for 200,000)."""
    if "\x00" in value:
        return NUL_REFUSED
    if value.isascii():
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        return SURROGATE_REFUSED
    return None


def text_problems(value: Any, loc: Loc = ()) -> Iterator[tuple[Loc, str, bool]]:
    """(location, message, in a key) for every refused string among ``value``'s strings and
    mapping keys; a key's problem is located at its mapping."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            yield loc, problem, False
    elif isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            problem = text_problem(name)
            if problem is not None:
                yield loc, problem, True
                name = printable(name)
            yield from text_problems(item, (*loc, name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from text_problems(item, (*loc, index))


def printable(text: str) -> str:
    """``text`` with NUL and surrogates written as escapes, safe to quote in an error."""
    return _BAD_TEXT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dotted(loc: Loc) -> str:
    """``metadata.tags[0]``: a location as the API's messages write it."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _refuse_bad_text(value: Any, field: str) -> None:
    for loc, problem, in_key in text_problems(value, (field,)):
        where = f"a key of {dotted(loc)}" if in_key else dotted(loc)
        raise ValueError(problem if where == field else f"{problem}, in {where}")


def metadata_problem(value: dict[str, Any]) -> str | None:
    """``metadata`` is at most 8 KiB as JSON, on every door (REST and ``/v1``)."""
    if len(json.dumps(value)) > METADATA_MAX_BYTES:
        return "must be at most 8 KiB as JSON"
    return None


# pydantic names the member of a union it tried in the location ("str", "list[function-wrap[
# _run_root_validator()]]"): a client wants the field's path, not pydantic's type names.
_UNION_MEMBER = re.compile(r"^[a-z-]+\[.*\]$|^(str|int|float|bool|dict|list|none)$")


def validation_message(errors: list[Any]) -> str:
    """pydantic's errors as the REST API words them (a 422's message, on the ninja routes and
    the lean execute door alike): one line naming each wrong field and what is wrong with it,
    e.g. ``input.0.content: Input should be a valid string``. Where a field may be one of
    several shapes, only the errors of the shape that got furthest are kept ("input.0.role:
    ...", not also "input: should be a valid string"), and those at the same place are joined
    with "or"."""
    found: dict[str, list[str]] = {}
    depth: dict[str, int] = {}
    for err in errors:
        raw = [part for part in err.get("loc", ()) if part not in {"body", "payload"}]
        parts = [str(part) for part in raw if not _UNION_MEMBER.match(str(part))]
        # No location left: the error is about the body as a whole (e.g. it is missing).
        loc = ".".join(parts) or "body"
        root = parts[0] if parts else "body"
        if len(parts) < depth.get(root, 0):
            continue  # another shape of this field got further: its errors say more
        if len(parts) > depth.get(root, 0):
            depth[root] = len(parts)
            for key in [k for k in found if k == root or k.startswith(root + ".")]:
                if key.count(".") + 1 < len(parts):
                    del found[key]
        messages = found.setdefault(loc, [])
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "string_unicode":
            # pydantic's own words for a lone surrogate in a constrained string ("unable to
            # parse raw data as a unicode string"): say it as every other door does.
            message = SURROGATE_REFUSED
        if message not in messages:
            messages.append(message)
    return "; ".join(f"{loc}: {' or '.join(messages)}" for loc, messages in found.items())


class StrictSchema(Schema):
    model_config = ConfigDict(extra="forbid")


class MessageIn(StrictSchema):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_TEXT)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        problem = text_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


class ExecuteIn(StrictSchema):
    input: str | list[MessageIn] = Field(
        description="The task as text, or a list of chat messages."
    )
    session_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    metadata: dict[str, Any] | None = None
    # Strict: "10" and true are refused, not coerced (a client that sends them has a bug).
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000, strict=True)

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[MessageIn]) -> str | list[MessageIn]:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must not be empty")
            if len(value) > MAX_TEXT:
                raise ValueError(f"must be at most {MAX_TEXT} characters")
            problem = text_problem(value)
            if problem is not None:
                raise ValueError(problem)
        else:
            if not value:
                raise ValueError("must contain at least one message")
            if len(value) > MAX_MESSAGES:
                raise ValueError(f"must contain at most {MAX_MESSAGES} messages")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        problem = metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        _refuse_bad_text(value, "metadata")
        return value


class UsageOut(Schema):
    input_tokens: int
    output_tokens: int


class StepOut(Schema):
    kind: str
    model: str | None
    deployment: int | None
    outcome: str
    detail: str = Field(
        description="What happened. A failed provider attempt or tool shows operate and admin "
        "keys the provider's own words; other keys a typed summary, e.g. "
        "'provider error 401 (authentication)', 'upstream timeout'."
    )
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
    created_at: float = Field(
        description="Seconds since the epoch: when the execution was accepted (a queued one "
        "keeps it when a worker starts it)."
    )
    started_at: float | None = Field(
        default=None,
        description="Seconds since the epoch: when it started running (null: not started "
        "yet, or recorded before this field existed). started_at - created_at is a queued "
        "execution's wait.",
    )
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


# What is stored is shown as it is. The input's strict types and floors (MIN_TIMEOUT_S, ...)
# are for what clients send: an agent stored before a floor existed still reads back (and a
# PATCH then names the field to fix), so the output keeps only the columns' own bounds (> 0).
class AgentBreakerOut(BreakerSpec):
    model_config = ConfigDict(strict=False)

    recovery_timeout_s: float = Field(default=60, gt=0, le=86_400)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    slow_call_s: float | None = Field(default=None, gt=0, le=3600)
    slow_call_rate_threshold: float = Field(default=1.0, gt=0, le=1)


class AgentToolOut(ToolSpec):
    model_config = ConfigDict(strict=False)

    timeout_s: float = Field(default=10, gt=0, le=300)


class AgentOut(AgentSpec):
    model_config = ConfigDict(strict=False)

    timeout_s: float = Field(default=30, gt=0, le=3600)
    breaker: AgentBreakerOut = Field(default_factory=AgentBreakerOut)
    tools: list[AgentToolOut] = Field(default_factory=list)  # type: ignore[assignment]
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
