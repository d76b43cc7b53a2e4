"""The real provider clients over HTTP against fakellm: both wire formats, every fault.

Each call goes through :class:`ProviderRouter` (the production client) to a fakellm on
127.0.0.1; fakellm's documented token accounting makes every number below exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from agents.runtime.errors import (
    AuthFailed,
    Capacity,
    MalformedReply,
    ProviderError,
    ProviderFailure,
    QuotaExhausted,
    RateLimited,
    Timeout,
)
from agents.runtime.providers.base import estimate_messages, estimate_tokens
from agents.runtime.providers.registry import ProviderRouter
from agents.runtime.types import (
    ChatRequest,
    ChatResponse,
    Deployment,
    Message,
    ToolSpec,
    Usage,
)
from tests.agents.runtime.fakellm_fixture import (
    KINDS,
    UPSTREAM_MODEL,
    Kind,
    Upstream,
    fake_input_tokens,
    provider_router,
    upstreams,
)

MESSAGES = (Message("system", "You are terse."), Message("user", "hello there"))
LOOKUP = ToolSpec(
    name="lookup_order",
    kind="python",
    description="Look an order up",
    parameters={
        "type": "object",
        "properties": {"order": {"type": "string"}, "count": {"type": "integer"}},
        "required": ["order"],
    },
)
HANG_TIMEOUT_S = 1.0

pytestmark = pytest.mark.parametrize("kind", KINDS)


@pytest.fixture
async def fakellm() -> AsyncIterator[Upstream]:
    async with upstreams() as start:
        yield await start()


@pytest.fixture
async def router() -> AsyncIterator[ProviderRouter]:
    async with provider_router() as providers:
        yield providers


def chat_request(kind: Kind, messages: tuple[Message, ...] = MESSAGES, **kw: Any) -> ChatRequest:
    return ChatRequest(model=UPSTREAM_MODEL[kind], messages=messages, max_tokens=64, **kw)


class Tokens:
    """An ``on_token`` callback that keeps what it was handed."""

    def __init__(self) -> None:
        self.items: list[str] = []

    async def __call__(self, text: str) -> None:
        self.items.append(text)

    @property
    def text(self) -> str:
        return "".join(self.items)


async def call(
    router: ProviderRouter,
    deployment: Deployment,
    request: ChatRequest,
    *,
    stream: bool = False,
    timeout_s: float = 5.0,
) -> tuple[ChatResponse, Tokens]:
    tokens = Tokens()
    response = await router.chat(
        deployment, request, timeout_s=timeout_s, on_token=tokens if stream else None
    )
    return response, tokens


async def failure_of(
    router: ProviderRouter,
    deployment: Deployment,
    request: ChatRequest,
    *,
    stream: bool = False,
    timeout_s: float = 5.0,
) -> tuple[ProviderFailure, Tokens]:
    tokens = Tokens()
    with pytest.raises(ProviderFailure) as caught:
        await router.chat(
            deployment, request, timeout_s=timeout_s, on_token=tokens if stream else None
        )
    return caught.value, tokens


# --- completions ----------------------------------------------------------------------------


async def test_a_plain_completion_parses_content_and_usage(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(output_tokens=5)
    response, _ = await call(router, fakellm.deployment(1, "m", kind=kind), chat_request(kind))

    assert response.content == "echo: hello there lorem ipsum"
    assert response.usage == Usage(fake_input_tokens(MESSAGES), 5) == Usage(8, 5)
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()
    [seen] = await fakellm.requests()
    assert seen["body"]["model"] == UPSTREAM_MODEL[kind]
    assert seen["body"]["max_tokens"] == 64
    assert "stream" not in seen["body"]


async def test_a_streamed_completion_hands_over_every_delta_and_reads_usage_from_its_end(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(output_tokens=7)
    response, tokens = await call(
        router, fakellm.deployment(1, "m", kind=kind), chat_request(kind), stream=True
    )

    assert len(tokens.items) == 7
    assert tokens.text == response.content == "echo: hello there lorem ipsum dolor sit"
    # The upstream's own numbers from the terminal events, not the client's estimate (15, 10).
    assert response.usage == Usage(8, 7)
    assert (estimate_messages(MESSAGES), estimate_tokens(response.content)) == (15, 10)
    assert response.finish_reason == "stop"
    [seen] = await fakellm.requests()
    assert seen["body"]["stream"] is True
    if kind == "openai":
        assert seen["body"]["stream_options"] == {"include_usage": True}
    stats = await fakellm.stats()
    endpoint = "/v1/chat/completions" if kind == "openai" else "/v1/messages"
    assert stats["endpoints"][endpoint]["streams"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_max_tokens_truncates_the_answer_and_reports_length(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter
) -> None:
    request = ChatRequest(UPSTREAM_MODEL[kind], MESSAGES, max_tokens=3)
    response, _ = await call(router, fakellm.deployment(1, "m", kind=kind), request, stream=stream)

    assert response.content == "echo: hello there"
    assert response.usage == Usage(8, 3)
    assert response.finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_tool_call_round_trips_through_the_wire_format(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(tool_call=True)
    deployment = fakellm.deployment(1, "m", kind=kind)
    asked = (Message("user", "find order 42"),)

    first, tokens = await call(
        router, deployment, chat_request(kind, asked, tools=(LOOKUP,)), stream=stream
    )

    [tool_call] = first.tool_calls
    assert tool_call.name == "lookup_order"
    assert json.loads(tool_call.arguments) == {"order": "find order 42", "count": 1}
    assert tool_call.id.startswith("call_fake" if kind == "openai" else "toolu_fake")
    assert first.finish_reason == "tool_calls"
    assert first.content == ""
    assert tokens.items == []
    assert first.usage.input_tokens == fake_input_tokens(asked) == 4
    assert first.usage.output_tokens > 0

    result = '{"status": "shipped"}'
    transcript = (
        *asked,
        Message("assistant", "", tool_calls=(tool_call,)),
        Message("tool", result, tool_call_id=tool_call.id, name="lookup_order"),
    )
    second, _ = await call(
        router, deployment, chat_request(kind, transcript, tools=(LOOKUP,)), stream=stream
    )

    assert second.tool_calls == ()
    assert second.content.startswith(f"result: {result}")
    assert second.finish_reason == "stop"
    assert second.usage.output_tokens == 16
    seen = (await fakellm.requests())[-1]["body"]["messages"]
    if kind == "openai":
        assert seen[1]["tool_calls"] == [
            {
                "id": tool_call.id,
                "type": "function",
                "function": {"name": "lookup_order", "arguments": tool_call.arguments},
            }
        ]
        assert seen[2] == {"role": "tool", "content": result, "tool_call_id": tool_call.id}
    else:
        assert seen[1] == {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": tool_call.id,
                    "name": "lookup_order",
                    "input": {"order": "find order 42", "count": 1},
                }
            ],
        }
        assert seen[2] == {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_call.id, "content": result}],
        }


async def test_plain_and_streamed_tool_calls_report_the_same_usage(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(tool_call=True)
    deployment = fakellm.deployment(1, "m", kind=kind)
    request = chat_request(kind, (Message("user", "find order 42"),), tools=(LOOKUP,))

    plain, _ = await call(router, deployment, request)
    streamed, _ = await call(router, deployment, request, stream=True)

    assert plain.usage == streamed.usage
    assert [(c.name, json.loads(c.arguments)) for c in plain.tool_calls] == [
        (c.name, json.loads(c.arguments)) for c in streamed.tool_calls
    ]


async def test_the_api_key_is_sent_the_way_the_provider_expects(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(api_key="sk-right")

    wrong, _ = await failure_of(
        router, fakellm.deployment(1, "m", kind=kind, api_key="sk-wrong"), chat_request(kind)
    )
    right, _ = await call(
        router, fakellm.deployment(2, "m", kind=kind, api_key="sk-right"), chat_request(kind)
    )

    assert type(wrong) is AuthFailed
    assert wrong.status == 401
    assert right.usage == Usage(8, 16)


# --- faults -> typed failures ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [(500, ProviderError), (502, ProviderError), (503, Capacity), (529, Capacity)],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_an_upstream_error_status_maps_to_its_failure_type(
    kind: Kind,
    stream: bool,
    status: int,
    expected: type[ProviderFailure],
    fakellm: Upstream,
    router: ProviderRouter,
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=status)

    failure, tokens = await failure_of(
        router, fakellm.deployment(1, "m", kind=kind), chat_request(kind), stream=stream
    )

    assert type(failure) is expected
    assert failure.status == status
    assert failure.retry_after is None
    assert tokens.items == []


async def test_a_rate_limit_carries_the_parsed_retry_after(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=429, retry_after=2)

    failure, _ = await failure_of(router, fakellm.deployment(1, "m", kind=kind), chat_request(kind))

    assert type(failure) is RateLimited
    assert failure.status == 429
    assert failure.retry_after == 2.0
    assert failure.input_tokens == failure.output_tokens == 0


async def test_an_overloaded_answer_with_retry_after_carries_it_too(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(error_rate=1, error_status=503, retry_after=3)

    failure, _ = await failure_of(router, fakellm.deployment(1, "m", kind=kind), chat_request(kind))

    assert type(failure) is Capacity
    assert failure.retry_after == 3.0


async def test_exhausted_quota_is_told_apart_from_a_rate_limit(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(quota_exhausted=True)

    failure, _ = await failure_of(router, fakellm.deployment(1, "m", kind=kind), chat_request(kind))

    assert type(failure) is QuotaExhausted
    assert failure.retry_after is None
    assert (await fakellm.stats())["endpoints"][
        "/v1/chat/completions" if kind == "openai" else "/v1/messages"
    ]["outcomes"] == {"quota": 1}


async def test_a_body_cut_before_its_usage_is_a_provider_error_charged_an_estimate(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(malformed_rate=1)  # half a JSON body: the usage is in the lost half

    failure, _ = await failure_of(router, fakellm.deployment(1, "m", kind=kind), chat_request(kind))

    assert type(failure) is ProviderError  # not even a whole reply: the provider's fault
    assert failure.message.startswith("malformed")
    # Never a free call: the prompt, plus an estimate of what arrived.
    assert failure.input_tokens == estimate_messages(MESSAGES)
    assert failure.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_an_answer_whose_text_is_not_utf8_is_charged_the_usage_it_reports(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(malformed_rate=1, malformed_mode="invalid_utf8")

    failure, tokens = await failure_of(
        router, fakellm.deployment(1, "m", kind=kind), chat_request(kind), stream=stream
    )

    assert type(failure) is MalformedReply
    assert failure.message.startswith("malformed")
    assert (failure.input_tokens, failure.output_tokens) == (fake_input_tokens(MESSAGES), 16)
    assert tokens.items == []  # the broken text is never handed over, nor what follows it


async def test_a_stream_with_a_broken_event_is_charged_the_usage_it_ends_with(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(malformed_rate=1)  # one cut event, then the usage and the end

    failure, tokens = await failure_of(
        router, fakellm.deployment(1, "m", kind=kind), chat_request(kind), stream=True
    )

    assert type(failure) is MalformedReply
    assert failure.message.startswith("malformed stream")
    assert (failure.input_tokens, failure.output_tokens) == (fake_input_tokens(MESSAGES), 16)
    assert tokens.items == []


async def test_a_cut_stream_is_a_provider_error_that_still_costs_tokens(
    kind: Kind, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(cut_stream_rate=1)

    failure, tokens = await failure_of(
        router, fakellm.deployment(1, "m", kind=kind), chat_request(kind), stream=True
    )

    assert type(failure) is ProviderError
    assert len(tokens.items) == 8  # fakellm cuts after half of the 16 deltas
    assert tokens.text == "echo: hello there lorem ipsum dolor sit amet"
    # Anthropic reported the input in message_start; OpenAI's usage only comes at the end,
    # so the client estimates it. The output is estimated from what arrived, in both.
    expected_input = 8 if kind == "anthropic" else estimate_messages(MESSAGES)
    assert failure.input_tokens == expected_input > 0
    assert failure.output_tokens == estimate_tokens(tokens.text) == 11
    assert (await fakellm.requests())[0]["outcome"] == "cut"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
async def test_a_hang_times_out_at_the_call_timeout(
    kind: Kind, stream: bool, fakellm: Upstream, router: ProviderRouter
) -> None:
    await fakellm.set_faults(hang_rate=1)

    started = time.monotonic()
    failure, _ = await failure_of(
        router,
        fakellm.deployment(1, "m", kind=kind),
        chat_request(kind),
        stream=stream,
        timeout_s=HANG_TIMEOUT_S,
    )
    elapsed = time.monotonic() - started

    assert type(failure) is Timeout
    assert failure.phase == "total"
    assert HANG_TIMEOUT_S * 0.9 <= elapsed <= HANG_TIMEOUT_S * 1.1
