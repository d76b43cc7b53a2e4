"""The OpenAI-compatible endpoint's request: the body's schema (``ChatCompletionIn``), its text
checks, the message transcript and the client tools with their ``tool_choice``; a bad field is
:class:`Invalid`, naming it (OpenAI's ``param``)."""

from __future__ import annotations

import json
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.runtime.schemas import schema_problem
from agents.runtime.types import (
    AgentConfig,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
)
from agents.schemas import metadata_problem, text_problems

MAX_TOOL_SCHEMA_BYTES = 16_384  # one client tool's parameters, as JSON
MAX_TOOLS_SCHEMA_BYTES = 65_536  # all of a request's client tools


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


MAX_TOOLS = 128  # OpenAI's own limit
_TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
_EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class _CalledFunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=_TOOL_NAME)
    arguments: str


class _ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"] = "function"
    function: _CalledFunctionIn


class _MessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None
    tool_calls: list[_ToolCallIn] | None = None  # assistant turns that called client tools
    tool_call_id: str | None = Field(default=None, max_length=256)  # tool results

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(default=False, strict=True)


class _FunctionIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=_TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _ToolIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: _FunctionIn


class ChatCompletionIn(BaseModel):
    """The request fields Breakwater honours; other OpenAI fields (``temperature``,
    ``parallel_tool_calls``, ...) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=64)
    messages: list[_MessageIn] = Field(min_length=1, max_length=200)
    # Numbers and flags are strict, as on OpenAI and the REST door: "10", 10.0 and true are
    # refused rather than coerced (pydantic's lax mode would take them).
    stream: bool = Field(default=False, strict=True)
    stream_options: _StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, strict=True)
    max_completion_tokens: int | None = Field(default=None, ge=1, strict=True)
    n: int = Field(default=1, ge=1, le=1, strict=True)
    tools: list[_ToolIn] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Any = None  # checked against the tools by tools_of
    functions: Any = None  # the legacy functions API: refused with a pointer to tools
    function_call: Any = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        problem = None if value is None else metadata_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value


def bad_text(raw: bytes) -> tuple[str, str] | None:
    """(param, message) for the first NUL or lone surrogate in the body, or None.

    Only called when a cheap test hints at one: a ``\\u0000`` escape in the bytes (NUL can
    only be written so in JSON), or a body jiter refused as invalid JSON (it refuses lone
    surrogates that way, with a position but no field). The stdlib parser keeps such text, so
    the field can be named."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return None  # really not JSON: jiter's own message stands
    for loc, problem, in_key in text_problems(body):
        where = ".".join(str(part) for part in loc) or "body"
        return where, f"{where}: {'keys ' if in_key else ''}{problem}"
    return None


class Invalid(Exception):
    """A request field that is wrong: answered 400 with ``param`` naming it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


# --- client tools and their turns --------------------------------------------------------------


def messages_of(items: list[_MessageIn]) -> tuple[Message, ...]:
    """The runtime's messages. A conversation with tool turns (rare) takes the checked path."""
    out = []
    for m in items:
        if m.tool_calls or m.role == "tool":
            return _tool_transcript(items)
        out.append(Message("system" if m.role == "developer" else m.role, m.text()))
    return tuple(out)


def _tool_transcript(items: list[_MessageIn]) -> tuple[Message, ...]:
    """Messages with tool calls and results, checked as OpenAI checks them: the ``tool``
    messages right after an assistant message with ``tool_calls`` answer those calls, one
    result per call id, and no call is left without its result."""
    out: list[Message] = []
    waiting: dict[str, str] = {}  # call id -> tool name, still without a result
    asked_at = -1
    for index, m in enumerate(items):
        if m.role == "tool":
            where = f"messages.{index}.tool_call_id"
            if not m.tool_call_id:
                raise Invalid(where, "required on a message with role 'tool'")
            name = waiting.pop(m.tool_call_id, None)
            if name is None:
                raise Invalid(
                    where,
                    f"{m.tool_call_id!r} answers no tool call of the assistant message before it",
                )
            out.append(Message("tool", m.text(), tool_call_id=m.tool_call_id, name=name))
            continue
        if waiting:
            raise Invalid(
                f"messages.{asked_at}.tool_calls",
                f"no tool message answers {', '.join(sorted(waiting))} (tool results must "
                "follow the assistant message that called the tools)",
            )
        if not m.tool_calls:
            out.append(Message("system" if m.role == "developer" else m.role, m.text()))
            continue
        if m.role != "assistant":
            raise Invalid(f"messages.{index}.tool_calls", "only assistant messages carry them")
        calls = []
        for position, call in enumerate(m.tool_calls):
            if call.id in waiting:
                raise Invalid(
                    f"messages.{index}.tool_calls.{position}.id", f"duplicate id {call.id!r}"
                )
            waiting[call.id] = call.function.name
            calls.append(ToolCall(call.id, call.function.name, call.function.arguments))
        asked_at = index
        out.append(Message("assistant", m.text(), tool_calls=tuple(calls)))
    if waiting:
        raise Invalid(
            f"messages.{asked_at}.tool_calls",
            f"no tool message answers {', '.join(sorted(waiting))}",
        )
    return tuple(out)


def tools_of(
    payload: ChatCompletionIn, agent: AgentConfig
) -> tuple[tuple[ToolSpec, ...], ToolChoice | None]:
    """The request's tools as client :class:`ToolSpec` and its ``tool_choice``; raises
    :class:`Invalid` naming the first bad field."""
    if payload.functions is not None or payload.function_call is not None:
        field = "functions" if payload.functions is not None else "function_call"
        raise Invalid(field, "the legacy functions API is not supported; use tools and tool_choice")
    own = {tool.name for tool in agent.tools}
    names: set[str] = set()
    specs = []
    schema_bytes = 0
    for index, tool in enumerate(payload.tools or ()):
        function = tool.function
        where = f"tools.{index}.function"
        if function.name in names:
            raise Invalid(f"{where}.name", f"duplicate tool name {function.name!r}")
        if function.name in own:
            raise Invalid(
                f"{where}.name",
                f"{function.name!r} is already a tool of model {agent.name!r} (run "
                "server-side); rename yours",
            )
        names.add(function.name)
        parameters = function.parameters or _EMPTY_PARAMETERS
        if parameters.get("type") != "object":
            raise Invalid(
                f"{where}.parameters", 'must be a JSON Schema with "type": "object" at the top'
            )
        # Checking a schema against the 2020-12 metaschema costs about 3 ms per KiB on the
        # serving loop (cached per schema after that): bounded, so one request cannot hold it.
        size = len(orjson.dumps(parameters))
        schema_bytes += size
        if size > MAX_TOOL_SCHEMA_BYTES:
            raise Invalid(
                f"{where}.parameters",
                f"at most {MAX_TOOL_SCHEMA_BYTES} bytes of JSON Schema per tool, got {size}",
            )
        if schema_bytes > MAX_TOOLS_SCHEMA_BYTES:
            raise Invalid(
                "tools", f"at most {MAX_TOOLS_SCHEMA_BYTES} bytes of JSON Schema in all, got more"
            )
        problem = schema_problem(parameters)
        if problem is not None:
            raise Invalid(problem.at(f"{where}.parameters", brackets=False), problem.reason)
        specs.append(
            ToolSpec(
                name=function.name,
                kind="client",
                description=function.description or "",
                parameters=parameters,
                strict=function.strict,
            )
        )
    return tuple(specs), _tool_choice(payload.tool_choice, names)


def _tool_choice(value: Any, names: set[str]) -> ToolChoice | None:
    if value is None:
        return None
    if value in ("auto", "none", "required"):
        if names:
            return ToolChoice(value)
        if value == "required":
            raise Invalid("tool_choice", "'required' is only allowed when tools are given")
        return None  # auto / none without tools: nothing to choose from
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise Invalid("tool_choice.function.name", "required")
        if name not in names:
            raise Invalid("tool_choice.function.name", f"{name!r} is not one of the tools given")
        return ToolChoice("function", name)
    raise Invalid(
        "tool_choice",
        'must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}',
    )
