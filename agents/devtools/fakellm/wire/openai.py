"""OpenAI Chat Completions: the JSON body, the SSE stream, the error bodies."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.devtools.fakellm.wire.common import Prompt, Reply, Stream, _dumps

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
