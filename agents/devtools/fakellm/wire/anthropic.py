"""Anthropic Messages: the JSON body, the SSE stream, the error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.devtools.fakellm.wire.common import Prompt, Reply, Stream, _dumps

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
