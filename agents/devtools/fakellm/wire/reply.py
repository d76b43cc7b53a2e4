"""The deterministic answer to a :class:`~agents.devtools.fakellm.wire.common.Prompt`."""

from __future__ import annotations

from typing import Any, Literal

from agents.devtools.fakellm.wire.common import Prompt, Reply, Tool, _dumps

SNIPPET_CHARS = 40
ARG_CHUNK_CHARS = 12
FILLER = (
    *("lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed"),
    *("do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna"),
)


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
