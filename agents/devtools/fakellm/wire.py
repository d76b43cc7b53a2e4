"""The two wire formats fakellm speaks: OpenAI Chat Completions and Anthropic Messages.

Requests are parsed into one :class:`Prompt`; the deterministic answer is one :class:`Reply`;
each format renders it as a JSON body or as the list of SSE events of a stream. Error bodies
follow each provider's shape. No aiohttp here: this module is plain data in, bytes out.

Token accounting (the same for both formats, so one conversation costs the same anywhere):
input tokens = total characters of all message text (system prompt included) // 4 + one per
message (the system prompt counts as one); output tokens = the number of content chunks
streamed (words of a text reply, argument pieces of a tool call).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["openai", "anthropic"]

SNIPPET_CHARS = 40
ARG_CHUNK_CHARS = 12
FILLER = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed"),
    *("do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna"),
)

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


class BadRequest(Exception):
    """The request does not follow the wire format; answered 400 in the caller's format."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    schema: Mapping[str, Any]


@dataclass(slots=True)
class Prompt:
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    input_tokens: int
    last_user_text: str
    tool_result: str | None  # text of the tool result when the last message is one
    tools: tuple[Tool, ...]
    forced_tool: str | None  # a tool the request forces ("" = any tool)
    tools_disabled: bool  # tool_choice none


@dataclass(slots=True)
class Reply:
    chunks: tuple[str, ...]  # text pieces, or argument-JSON pieces of a tool call
    finish: Literal["stop", "length", "tool"]
    tool_name: str | None = None
    tool_input: Any = None

    @property
    def is_tool(self) -> bool:
        return self.tool_name is not None

    @property
    def output_tokens(self) -> int:
        return len(self.chunks)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


# --- request parsing ----------------------------------------------------------------------


def _text_of(content: Any) -> str:
    """The text inside a message ``content`` (string, or a list of typed parts/blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    parts.append(part["text"])
                elif part.get("type") == "tool_result":
                    parts.append(_text_of(part.get("content")))
                elif part.get("type") == "tool_use":
                    parts.append(_dumps(part.get("input", {})))
        return " ".join(parts)
    return ""


def _positive_int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"{key}: must be an integer >= 1", key)
    return value


def _messages(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty array", "messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest(f"messages[{index}]: must be an object with a role", "messages")
    return messages


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: must be a non-empty string", "model")
    return model


def _stream(body: Mapping[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise BadRequest("stream: must be a boolean", "stream")
    return stream


def _count_input(texts: list[str]) -> int:
    return sum(len(t) for t in texts) // 4 + len(texts)


def _last_user_text(messages: list[Mapping[str, Any]], texts: list[str]) -> str:
    for message, text in zip(reversed(messages), reversed(texts), strict=False):
        if message.get("role") == "user" and text:
            return text
    return texts[-1] if texts else ""


def _check_forced(name: str, tools: list[Tool], param: str) -> None:
    """A tool_choice naming a tool the request does not declare is a 400, as upstream."""
    if not any(tool.name == name for tool in tools):
        raise BadRequest(f"{param}: no tool named {name!r} in tools", "tool_choice")


def parse_openai(body: Any) -> Prompt:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = _model(body)
    messages = _messages(body)
    stream = _stream(body)
    options = body.get("stream_options")
    include_usage = bool(stream and isinstance(options, dict) and options.get("include_usage"))
    max_tokens = _positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens")

    texts = []
    for message in messages:
        text = _text_of(message.get("content"))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict) and isinstance(call.get("function"), dict):
                text += str(call["function"].get("arguments", ""))
        texts.append(text)
    last = messages[-1]
    tool_result = texts[-1] if last.get("role") == "tool" else None

    tools = []
    for index, tool in enumerate(body.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"tools[{index}].function.name: required", "tools")
        schema = function.get("parameters")
        tools.append(Tool(function["name"], schema if isinstance(schema, dict) else {}))

    choice = body.get("tool_choice")
    forced: str | None = None
    if choice == "required":
        forced = ""
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        forced = str(choice["function"].get("name", ""))
        _check_forced(forced, tools, "tool_choice.function.name")
    return Prompt(
        model=model,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens,
        input_tokens=_count_input(texts),
        last_user_text=_last_user_text(messages, texts),
        tool_result=tool_result,
        tools=tuple(tools),
        forced_tool=forced,
        tools_disabled=choice == "none",
    )


def parse_anthropic(body: Any) -> Prompt:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = _model(body)
    max_tokens = _positive_int(body, "max_tokens")
    if max_tokens is None:
        raise BadRequest("max_tokens: Field required", "max_tokens")
    messages = _messages(body)
    stream = _stream(body)

    texts = [_text_of(message.get("content")) for message in messages]
    system = body.get("system")
    system_text = _text_of(system) if system else ""
    counted = [system_text, *texts] if system_text else texts
    last = messages[-1]
    content = last.get("content")
    tool_result = None
    if last.get("role") == "user" and isinstance(content, list):
        results = [
            _text_of(block.get("content"))
            for block in content
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        if results:
            tool_result = " ".join(results)

    tools = []
    for index, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise BadRequest(f"tools.{index}.name: Field required", "tools")
        schema = tool.get("input_schema")
        tools.append(Tool(tool["name"], schema if isinstance(schema, dict) else {}))

    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else None
    forced: str | None = None
    if kind == "any":
        forced = ""
    elif kind == "tool" and isinstance(choice, dict):
        forced = str(choice.get("name", ""))
        _check_forced(forced, tools, "tool_choice.name")
    return Prompt(
        model=model,
        stream=stream,
        include_usage=True,
        max_tokens=max_tokens,
        input_tokens=_count_input(counted),
        last_user_text=_last_user_text(messages, texts),
        tool_result=tool_result,
        tools=tuple(tools),
        forced_tool=forced,
        tools_disabled=kind == "none",
    )


# --- the deterministic answer -------------------------------------------------------------


def _example_value(schema: Any, snippet: str) -> Any:
    if not isinstance(schema, dict):
        return snippet
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if not isinstance(kind, str):
        return snippet
    return {
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
        "object": {},
        "null": None,
    }.get(kind, snippet)


def tool_arguments(tool: Tool, snippet: str) -> dict[str, Any]:
    """Deterministic arguments for ``tool``: one example value per declared property."""
    properties = tool.schema.get("properties")
    if not isinstance(properties, dict):
        return {}
    return {str(name): _example_value(spec, snippet) for name, spec in properties.items()}


def build_reply(prompt: Prompt, *, output_tokens: int, tool_call: bool) -> Reply:
    """The answer: a tool call, or ``echo: <40 chars>`` / ``result: <40 chars>`` padded."""
    wants_tool = prompt.forced_tool is not None or tool_call
    if prompt.tools and prompt.tool_result is None and not prompt.tools_disabled and wants_tool:
        tool = next((t for t in prompt.tools if t.name == prompt.forced_tool), prompt.tools[0])
        arguments = tool_arguments(tool, prompt.last_user_text[:SNIPPET_CHARS].strip())
        encoded = _dumps(arguments)
        pieces = tuple(
            encoded[i : i + ARG_CHUNK_CHARS] for i in range(0, len(encoded), ARG_CHUNK_CHARS)
        )
        return Reply(chunks=pieces, finish="tool", tool_name=tool.name, tool_input=arguments)

    if prompt.tool_result is not None:
        base = "result: " + prompt.tool_result[:SNIPPET_CHARS]
    else:
        base = "echo: " + prompt.last_user_text[:SNIPPET_CHARS]
    words = base.split()
    if len(words) < output_tokens:
        missing = output_tokens - len(words)
        words += (FILLER * (missing // len(FILLER) + 1))[:missing]
    words = words[:output_tokens]
    finish: Literal["stop", "length"] = "stop"
    if prompt.max_tokens is not None and prompt.max_tokens < len(words):
        words = words[: prompt.max_tokens]
        finish = "length"
    chunks = (words[0], *(" " + w for w in words[1:]))
    return Reply(chunks=chunks, finish=finish)


# --- OpenAI ---------------------------------------------------------------------------------

_OPENAI_FINISH = {"stop": "stop", "length": "length", "tool": "tool_calls"}


def openai_usage(prompt: Prompt, reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": prompt.input_tokens,
        "completion_tokens": reply.output_tokens,
        "total_tokens": prompt.input_tokens + reply.output_tokens,
    }


def openai_body(prompt: Prompt, reply: Reply, *, rid: str, created: int) -> bytes:
    message: dict[str, Any]
    if reply.is_tool:
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": f"call_{rid}",
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": reply.text},
                }
            ],
            "refusal": None,
        }
    else:
        message = {"role": "assistant", "content": reply.text, "refusal": None}
    return _dumps(
        {
            "id": f"chatcmpl-{rid}",
            "object": "chat.completion",
            "created": created,
            "model": prompt.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": _OPENAI_FINISH[reply.finish],
                }
            ],
            "usage": openai_usage(prompt, reply),
            "system_fingerprint": "fp_fakellm",
        }
    ).encode()


@dataclass(slots=True)
class Stream:
    """A stream as three parts, so faults can delay, cut or corrupt the middle."""

    preamble: list[bytes]  # sent with the headers
    deltas: list[bytes]  # one per content chunk (= one output token)
    terminal: list[bytes]  # finish, usage, [DONE] / message_stop


def _sse(data: Mapping[str, Any]) -> bytes:
    return b"data: " + _dumps(data).encode() + b"\n\n"


def openai_stream(prompt: Prompt, reply: Reply, *, rid: str, created: int) -> Stream:
    base: dict[str, Any] = {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion.chunk",
        "created": created,
        "model": prompt.model,
        "system_fingerprint": "fp_fakellm",
    }
    if prompt.include_usage:
        base["usage"] = None  # as OpenAI does: null on every chunk but the last

    def chunk(delta: Mapping[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    if reply.is_tool:
        first = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": f"call_{rid}",
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": ""},
                }
            ],
        }
        deltas = [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            for piece in reply.chunks
        ]
    else:
        first = {"role": "assistant", "content": "", "refusal": None}
        deltas = [chunk({"content": piece}) for piece in reply.chunks]
    terminal = [chunk({}, _OPENAI_FINISH[reply.finish])]
    if prompt.include_usage:
        terminal.append(_sse({**base, "choices": [], "usage": openai_usage(prompt, reply)}))
    terminal.append(b"data: [DONE]\n\n")
    return Stream(preamble=[chunk(first)], deltas=deltas, terminal=terminal)


_OPENAI_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist."),
    429: (
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests. Please try again later.",
    ),
    500: (
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    502: ("server_error", None, "Bad gateway."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
    529: ("server_error", "overloaded", "The engine is currently overloaded."),
}


def openai_error(status: int, *, message: str | None = None, param: str | None = None) -> bytes:
    kind, code, default = _OPENAI_ERRORS.get(
        status,
        ("server_error" if status >= 500 else "invalid_request_error", None, f"Error {status}."),
    )
    return _dumps(
        {"error": {"message": message or default, "type": kind, "param": param, "code": code}}
    ).encode()


OPENAI_QUOTA = _dumps(
    {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing "
            "details. For more information on this error, read the docs: "
            "https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
).encode()


# --- Anthropic ------------------------------------------------------------------------------

_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool": "tool_use"}


def _anthropic_block(reply: Reply, rid: str) -> dict[str, Any]:
    if reply.is_tool:
        return {
            "type": "tool_use",
            "id": f"toolu_{rid}",
            "name": reply.tool_name,
            "input": reply.tool_input,
        }
    return {"type": "text", "text": reply.text}


def anthropic_body(prompt: Prompt, reply: Reply, *, rid: str) -> bytes:
    return _dumps(
        {
            "id": f"msg_{rid}",
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [_anthropic_block(reply, rid)],
            "stop_reason": _ANTHROPIC_STOP[reply.finish],
            "stop_sequence": None,
            "usage": {"input_tokens": prompt.input_tokens, "output_tokens": reply.output_tokens},
        }
    ).encode()


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data).encode() + b"\n\n"


def anthropic_stream(prompt: Prompt, reply: Reply, *, rid: str) -> Stream:
    start = {
        "type": "message_start",
        "message": {
            "id": f"msg_{rid}",
            "type": "message",
            "role": "assistant",
            "model": prompt.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": prompt.input_tokens, "output_tokens": 1},
        },
    }
    if reply.is_tool:
        block = {**_anthropic_block(reply, rid), "input": {}}
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                },
            )
            for piece in reply.chunks
        ]
    else:
        block = {"type": "text", "text": ""}
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in reply.chunks
        ]
    preamble = [
        _event("message_start", start),
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        _event("ping", {"type": "ping"}),
    ]
    terminal = [
        _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _ANTHROPIC_STOP[reply.finish], "stop_sequence": None},
                "usage": {"output_tokens": reply.output_tokens},
            },
        ),
        _event("message_stop", {"type": "message_stop"}),
    ]
    return Stream(preamble=preamble, deltas=deltas, terminal=terminal)


_ANTHROPIC_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "There is an issue with your billing or payment information."),
    403: ("permission_error", "Your API key does not have permission to use this resource."),
    404: ("not_found_error", "Not found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit."),
    500: ("api_error", "Internal server error"),
    502: ("api_error", "Bad gateway"),
    503: ("api_error", "Service unavailable"),
    504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded"),
}


def anthropic_error(status: int, *, rid: str, message: str | None = None) -> bytes:
    kind, default = _ANTHROPIC_ERRORS.get(
        status, ("api_error" if status >= 500 else "invalid_request_error", f"Error {status}.")
    )
    return _dumps(
        {
            "type": "error",
            "error": {"type": kind, "message": message or default},
            "request_id": f"req_{rid}",
        }
    ).encode()


# Anthropic answers an account out of credit with a 400 invalid_request_error, not a 429.
ANTHROPIC_QUOTA_STATUS = 400
ANTHROPIC_QUOTA_MESSAGE = (
    "Your credit balance is too low to access the Anthropic API. "
    "Please go to Plans & Billing to upgrade or purchase credits."
)


# Never valid in UTF-8 (0xff and 0xfe start no sequence); ASCII-safe inside a JSON string.
INVALID_UTF8 = b"\xff\xfe"


def corrupt_utf8(data: bytes, text: str) -> bytes:
    """``data`` (a JSON body or an SSE event) with bytes that are not UTF-8 inside the string
    that holds ``text``, just after it; otherwise inside the first string value. The JSON stays
    complete, usage included: only a strict UTF-8 decoder notices."""
    escaped = _dumps(text)[1:-1].encode()
    at = data.find(escaped) if escaped else -1
    # Not found, e.g. an Anthropic tool_use body: its input is an object, not the streamed text.
    end = at + len(escaped) if at >= 0 else data.index(b':"') + 2
    return data[:end] + INVALID_UTF8 + data[end:]


def retry_after_header(seconds: float) -> str:
    """Retry-After takes whole seconds; round up so a client never retries too early."""
    return str(math.ceil(seconds))
