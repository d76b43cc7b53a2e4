"""Requests parsed into one :class:`~agents.devtools.fakellm.wire.common.Prompt`, per format."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agents.devtools.fakellm.wire.common import BadRequest, Prompt, Tool, _dumps


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
