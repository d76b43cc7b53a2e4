"""The two wire formats fakellm speaks: OpenAI Chat Completions and Anthropic Messages.

Requests are parsed into one :class:`Prompt`; the deterministic answer is one :class:`Reply`;
each format renders it as a JSON body or as the list of SSE events of a stream. Error bodies
follow each provider's shape. No aiohttp here: this package is plain data in, bytes out.
By role: ``common`` (the shapes both formats share, the byte-level faults), ``parse``,
``reply``, then one renderer per format, ``openai`` and ``anthropic``; every name is
re-exported here, so callers write ``wire.parse_openai``.

Token accounting (the same for both formats, so one conversation costs the same anywhere):
input tokens = total characters of all message text (system prompt included) // 4 + one per
message (the system prompt counts as one); output tokens = the number of content chunks
streamed (words of a text reply, argument pieces of a tool call).
"""

from __future__ import annotations

from agents.devtools.fakellm.wire.anthropic import (
    ANTHROPIC_QUOTA_MESSAGE,
    ANTHROPIC_QUOTA_STATUS,
    anthropic_body,
    anthropic_error,
    anthropic_stream,
)
from agents.devtools.fakellm.wire.common import (
    INVALID_UTF8,
    BadRequest,
    Format,
    Prompt,
    Reply,
    Stream,
    Tool,
    corrupt_utf8,
    retry_after_header,
)
from agents.devtools.fakellm.wire.openai import (
    OPENAI_QUOTA,
    openai_body,
    openai_error,
    openai_stream,
    openai_usage,
)
from agents.devtools.fakellm.wire.parse import parse_anthropic, parse_openai
from agents.devtools.fakellm.wire.reply import (
    ARG_CHUNK_CHARS,
    FILLER,
    SNIPPET_CHARS,
    build_reply,
    tool_arguments,
)

__all__ = [
    "ANTHROPIC_QUOTA_MESSAGE",
    "ANTHROPIC_QUOTA_STATUS",
    "ARG_CHUNK_CHARS",
    "FILLER",
    "INVALID_UTF8",
    "OPENAI_QUOTA",
    "SNIPPET_CHARS",
    "BadRequest",
    "Format",
    "Prompt",
    "Reply",
    "Stream",
    "Tool",
    "anthropic_body",
    "anthropic_error",
    "anthropic_stream",
    "build_reply",
    "corrupt_utf8",
    "openai_body",
    "openai_error",
    "openai_stream",
    "openai_usage",
    "parse_anthropic",
    "parse_openai",
    "retry_after_header",
    "tool_arguments",
]
