"""What both wire formats share: the parsed :class:`Prompt`, the :class:`Reply`, the
:class:`Stream` of SSE events, the 400 a bad request gets, and the byte-level faults."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["openai", "anthropic"]


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


@dataclass(slots=True)
class Stream:
    """A stream as three parts, so faults can delay, cut or corrupt the middle."""

    preamble: list[bytes]  # sent with the headers
    deltas: list[bytes]  # one per content chunk (= one output token)
    terminal: list[bytes]  # finish, usage, [DONE] / message_stop


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
